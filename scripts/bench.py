#!/usr/bin/env python
"""Benchmark runner: trains and evaluates models on ../shared/datasets and writes BENCHMARKS.md.

    python scripts/bench.py run SUITE [--only DATASET[/MODEL]] [--seed S]   # resumable: finished runs are skipped
    python scripts/bench.py report                               # BENCHMARKS.md from bench_results/*.json
    python scripts/bench.py reproduce TAG [TAG ...]              # retrain recorded runs, compare metrics

A suite is a YAML file in configs/bench/ listing runs (dataset, model, seeds, config file). Each run
is one `dmirec train` subprocess with one torch thread, so its wall time and peak RSS are its own;
two `bench.py run` processes ("lanes") can share the 2-core machine, and a lock file per run
keeps them from running the same one. A killed run is resumed with `dmirec train --resume` on the
next call; a run that finished training but lost its record is recorded without retraining.
Results land in bench_results/DATASET-MODEL-sSEED.json (committed), run directories in
bench_runs/ (not committed), prepared data in bench_data/ (not committed).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "datasets").resolve()
RESULTS = ROOT / "bench_results"
RUNS = ROOT / "bench_runs"
DATA = ROOT / "bench_data"
DMIREC = [sys.executable, "-m", "dmirec"]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem_gib, "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "os": platform.platform()}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        # the records themselves (bench_results/) do not make the code dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench_results"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def data_fingerprint(data_dir: Path) -> str:
    """sha256 over the prepared arrays and meta.json: the exact data a number was measured on."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(data_dir.glob("*.npy")) + [data_dir / "meta.json"]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def prepared(dataset: str) -> Path:
    out = DATA / dataset
    if not (out / "meta.json").exists():
        src = SHARED / dataset / "interactions.csv"
        if not src.exists():
            sys.exit(f"{src} not found: the benchmark datasets live in ../shared/datasets")
        subprocess.run(DMIREC + ["prepare", str(src), str(out), "--name", dataset], check=True)
    return out


def run_one(dataset: str, model: str, seed: int, config: str | None, extra: list[str],
            name: str | None = None, group: str = "main", reuse_from: str | None = None) -> dict | None:
    label = name or model
    tag = f"{dataset}-{label}-s{seed}"
    result_file = RESULTS / f"{tag}.json"
    if result_file.exists():
        print(f"[skip] {tag}: {result_file} exists")
        return json.loads(result_file.read_text())
    # two benchmark lanes may list the same run: whoever holds its lock runs it, the other skips it
    RUNS.mkdir(parents=True, exist_ok=True)
    lock = open(RUNS / f".{tag}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"[skip] {tag}: another bench process is running it")
        lock.close()
        return None
    try:
        source = RESULTS / f"{dataset}-{reuse_from}-s{seed}.json" if reuse_from else None
        if source is not None and source.exists():
            old = json.loads(source.read_text())
            if (old["model"], old["config"], old["extra"]) == (model, config, extra):  # the identical command
                _reuse(RUNS / f"{dataset}-{reuse_from}-s{seed}", RUNS / tag)
        return _run_locked(tag, dataset, model, seed, config, extra, label, group, result_file)
    finally:
        lock.close()


def _reuse(source: Path, run_dir: Path) -> None:
    """A finished run trained under another label with the identical command is recorded, not
    retrained: its directory is linked as this run's (the record says so by its "recovered" flag)."""
    if run_dir.exists() or not (source / "result.json").exists():
        return
    run_dir.symlink_to(source.resolve(), target_is_directory=True)
    print(f"[reuse] {run_dir.name}: the finished run {source.name} has the same command; recording it", flush=True)


def _run_locked(tag: str, dataset: str, model: str, seed: int, config: str | None, extra: list[str],
                label: str, group: str, result_file: Path) -> dict:
    if result_file.exists():  # finished by another lane while this one waited for the lock
        return json.loads(result_file.read_text())
    run_dir = RUNS / tag
    data = prepared(dataset)
    fresh = DMIREC + ["train", "--data", str(data), "--model", model, "--out", str(run_dir), "--seed", str(seed),
                      "--progress=false"]
    if config:
        fresh += ["--config", str(ROOT / config)]
    # {seed} and {runs} in a suite's extra arguments: this run's seed, the bench_runs directory
    fresh += [arg.format(seed=seed, runs=RUNS) for arg in extra]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("BENCH_THREADS", "1")}
    if (run_dir / "result.json").exists():
        # trained to the end, but its record was never written (the bench process died first):
        # record it without retraining; wall time = the run's own training + evaluation seconds
        # (start-up excluded), peak RSS unknown
        cmd = fresh
        done = json.loads((run_dir / "result.json").read_text())
        evals = [json.loads(l).get("seconds") or 0.0 for l in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if l.strip()]
        wall = done["train_seconds"] + sum(evals)
        rss, recovered = None, True
        print(f"[recover] {tag}: {run_dir / 'result.json'} exists; recording it", flush=True)
    else:
        recovered = False
        if (run_dir / "checkpoints" / "last.pt").exists():
            cmd = DMIREC + ["train", "--resume", str(run_dir)]
        else:
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            cmd = fresh
        print(f"[run] {tag}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        # One thread per run, so that two benchmark lanes can share the 2-core machine without
        # oversubscription; clean throughput numbers come from scripts/bench_speed.py instead.
        proc = subprocess.Popen(cmd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        rss = usage.ru_maxrss / 1024
        if status != 0:
            sys.exit(f"{tag} failed with status {status}")
    result = json.loads((run_dir / "result.json").read_text())
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    valid = [r for r in rows if r["split"] == "valid"]
    record = {
        "dataset": dataset, "model": model, "name": label, "group": group, "seed": seed, "config": config,
        "extra": extra,
        "command": " ".join(["dmirec"] + fresh[3:]),
        "steps": result["steps"], "best_step": result["best_step"], "stopped": result["stopped"],
        "valid_recall@50": result["valid_recall@50"], "test": result["test"],
        "train_seq_per_s": result["train_seq_per_s"],
        "valid_pass_s": statistics.median(r["seconds"] for r in valid) if valid else None,
        "valid_curve": [[r["step"], r["recall@50"]] for r in valid],  # (step, Recall@50) of every validation
        "wall_s_last_call": wall, "peak_rss_mb_last_call": rss,
        "resumed": cmd[3:5] == ["train", "--resume"], "recovered": recovered,
        "reused_from": run_dir.resolve().name if run_dir.is_symlink() else None,
        "machine": {**machine(), "torch_threads": int(env["OMP_NUM_THREADS"])},
        # frozen: enough to rerun this number exactly after defaults change
        "resolved_config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "commit": git_commit(), "data_fingerprint": data_fingerprint(data),
    }
    RESULTS.mkdir(exist_ok=True)
    result_file.write_text(json.dumps(record, indent=2))
    print(f"[done] {tag}: test R@50 {result['test']['recall@50']:.4f} in {wall:.0f} s", flush=True)
    return record


def cmd_run(args: argparse.Namespace) -> None:
    suite = yaml.safe_load((ROOT / "configs" / "bench" / f"{args.suite}.yaml").read_text())
    for entry in suite["runs"]:
        key = f"{entry['dataset']}/{entry.get('name', entry['model'])}"
        if args.only and not (key == args.only or entry["dataset"] == args.only):
            continue
        for seed in entry.get("seeds", [2021]):
            if args.seed is not None and seed != args.seed:
                continue
            run_one(entry["dataset"], entry["model"], seed, entry.get("config"), entry.get("extra", []),
                    entry.get("name"), entry.get("group", suite.get("group", "main")), entry.get("reuse_from"))


def cmd_reproduce(tags: list[str], suffix: str = "") -> None:
    """Retrain recorded runs from their frozen config (or their command when the record predates
    frozen configs) into bench_runs/TAG and compare every test metric with the record; writes
    bench_results/reproduce/TAG.json. The record itself is never changed."""
    out_dir = RESULTS / "reproduce"
    out_dir.mkdir(parents=True, exist_ok=True)
    for tag in tags:
        record = json.loads((RESULTS / f"{tag}.json").read_text())
        run_dir = RUNS / f"{tag}{suffix}"  # a suffix retrains beside an existing run directory
        data = prepared(record["dataset"])
        if not (run_dir / "result.json").exists():
            if (run_dir / "checkpoints" / "last.pt").exists():
                cmd = DMIREC + ["train", "--resume", str(run_dir)]
            else:
                cmd = DMIREC + ["train", "--data", str(data), "--out", str(run_dir), "--progress=false"]
                if record.get("resolved_config"):
                    frozen = RUNS / f".{tag}.frozen.yaml"
                    frozen.write_text(yaml.safe_dump({k: v for k, v in record["resolved_config"].items()
                                                      if k != "progress"}))
                    cmd += ["--config", str(frozen)]
                else:
                    cmd += ["--model", record["model"], "--seed", str(record["seed"])]
                    if record.get("config"):
                        cmd += ["--config", str(ROOT / record["config"])]
                    cmd += [a.format(seed=record["seed"], runs=RUNS) for a in record.get("extra", [])]
            print(f"[reproduce] {tag}: {' '.join(cmd)}", flush=True)
            start = time.perf_counter()
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("BENCH_THREADS", "1")}
            subprocess.run(cmd, env=env, check=True)
            wall = time.perf_counter() - start
        else:
            wall = None
        result = json.loads((run_dir / "result.json").read_text())
        diffs = {k: result["test"][k] - v for k, v in record["test"].items()
                 if k != "seconds" and isinstance(v, (int, float)) and k in result["test"]}
        worst = max((abs(d) for d in diffs.values()), default=0.0)
        row = {"tag": f"{tag}{suffix}", "recorded": record["test"], "rerun": result["test"], "diff": diffs,
               "max_abs_diff": worst, "same_steps": result["steps"] == record["steps"]
               and result["best_step"] == record["best_step"],
               "resolved_config": yaml.safe_load((run_dir / "config.yaml").read_text()),
               "commit": git_commit(), "data_fingerprint": data_fingerprint(data), "wall_s": wall,
               "machine": machine()}
        (out_dir / f"{tag}{suffix}.json").write_text(json.dumps(row, indent=2))
        print(f"[reproduce] {tag}: max |test metric diff| {worst:.2e}, same steps: {row['same_steps']}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("suite")
    p.add_argument("--only", default=None)
    p.add_argument("--seed", type=int, default=None, help="run only this seed of each entry (to split a suite into lanes)")
    p = sub.add_parser("report")
    p = sub.add_parser("reproduce")
    p.add_argument("tags", nargs="+")
    p.add_argument("--suffix", default="", help="train into bench_runs/TAG+SUFFIX (beside an existing run)")
    args = parser.parse_args()
    if args.cmd == "run":
        cmd_run(args)
    elif args.cmd == "reproduce":
        cmd_reproduce(args.tags, args.suffix)
    else:
        from bench_report import write_report  # scripts/bench_report.py

        write_report(RESULTS, ROOT / "BENCHMARKS.md")
