#!/usr/bin/env python
"""Benchmark runner: trains and evaluates models on ../shared/datasets and writes BENCHMARKS.md.

    python scripts/bench.py run SUITE [--only DATASET[/MODEL]] [--seed S]   # resumable: finished runs are skipped
    python scripts/bench.py report                               # BENCHMARKS.md from bench_results/*.json
    python scripts/bench.py rows [--check]                       # experiments/DATASET/NAME.yaml from the records
    python scripts/bench.py reproduce TAG|ROW [...] [--seed S]   # retrain recorded runs or rows, compare metrics

A suite is a YAML file in configs/bench/ listing runs (dataset, model, seeds, config file, flags) under
`runs:`, or result rows (experiments/DATASET/NAME.yaml, see scripts/bench_rows.py) under `rows:`. Each run
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_rows  # noqa: E402  (scripts/bench_rows.py: result rows)

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "datasets").resolve()
RESULTS = ROOT / "bench_results"
RUNS = ROOT / "bench_runs"
DATA = ROOT / "bench_data"
EXPERIMENTS = ROOT / "experiments"
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
            name: str | None = None, group: str = "main", reuse_from: str | None = None,
            frozen: dict | None = None, row: str | None = None, seed_config: dict | None = None) -> dict | None:
    """One benchmark run: from a config file and flags, or from ``frozen``, a row's full config for
    this seed (``row`` names it; the record then has ``"row"``, the row file as its config and the
    row's settings for this seed, ``seed_config``, which the row keeps per seed)."""
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
        return _run_locked(tag, dataset, model, seed, config, extra, label, group, result_file, frozen,
                           {"row": row, "seed_config": seed_config or {}} if row else {})
    finally:
        lock.close()


def _reuse(source: Path, run_dir: Path) -> None:
    """A finished run trained under another label with the identical command is recorded, not
    retrained: its directory is linked as this run's (the record says so by its "recovered" flag)."""
    if run_dir.exists() or not (source / "result.json").exists():
        return
    run_dir.symlink_to(source.resolve(), target_is_directory=True)
    print(f"[reuse] {run_dir.name}: the finished run {source.name} has the same command; recording it", flush=True)


def train_command(tag: str, data: Path, model: str, seed: int, config: str | None, extra: list[str],
                  frozen: dict | None = None) -> list[str]:
    """The fresh `dmirec train` command of a run: config file and flags, or a row's full config."""
    run_dir = RUNS / tag
    if frozen is not None:
        path = write_frozen(tag, frozen)
        return DMIREC + ["train", "--data", str(data), "--out", str(run_dir), "--progress=false", "--config", str(path)]
    fresh = DMIREC + ["train", "--data", str(data), "--model", model, "--out", str(run_dir), "--seed", str(seed),
                      "--progress=false"]
    if config:
        fresh += ["--config", str(ROOT / config)]
    # {seed} and {runs} in a suite's extra arguments: this run's seed, the bench_runs directory
    return fresh + [arg.format(seed=seed, runs=RUNS) for arg in extra]


def write_frozen(tag: str, config: dict) -> Path:
    """A full config written beside the run directories (bench_runs/.TAG.frozen.yaml), for --config."""
    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / f".{tag}.frozen.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "progress"}))
    return path


def _run_locked(tag: str, dataset: str, model: str, seed: int, config: str | None, extra: list[str],
                label: str, group: str, result_file: Path, frozen: dict | None = None,
                row_fields: dict | None = None) -> dict:
    if result_file.exists():  # finished by another lane while this one waited for the lock
        return json.loads(result_file.read_text())
    run_dir = RUNS / tag
    data = prepared(dataset)
    fresh = train_command(tag, data, model, seed, config, extra, frozen)
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
        "extra": extra, **(row_fields or {}),  # a row's run: "row" and "seed_config"
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


def suite_runs(suite: dict, only: str | None = None, seed: int | None = None) -> list[dict]:
    """The runs of a suite, in order, as run_one's keyword arguments. ``runs:`` entries give a config
    file and flags; ``rows:`` entries name result rows (``DATASET/NAME``, or ``{row: DATASET/NAME,
    seeds: [...]}`` for other seeds than the row's), each preceded by the rows it depends on."""
    out: list[dict] = []
    for entry in suite.get("runs", []):
        key = f"{entry['dataset']}/{entry.get('name', entry['model'])}"
        if only and not (key == only or entry["dataset"] == only):
            continue
        for s in entry.get("seeds", [2021]):
            if seed is not None and s != seed:
                continue
            out.append({"dataset": entry["dataset"], "model": entry["model"], "seed": s, "config": entry.get("config"),
                        "extra": entry.get("extra", []), "name": entry.get("name"),
                        "group": entry.get("group", suite.get("group", "main")), "reuse_from": entry.get("reuse_from")})
    for entry in suite.get("rows", []):
        row_id = entry if isinstance(entry, str) else entry.get("row")
        if not isinstance(row_id, str):
            raise bench_rows.RowError(f"suite entry {entry!r}: a row entry is DATASET/NAME or {{row: DATASET/NAME, seeds: [...]}}")
        row = bench_rows.load_row(EXPERIMENTS, row_id)
        if only and not (row_id == only or row["dataset"] == only):
            continue
        seeds = row["seeds"] if isinstance(entry, str) else entry.get("seeds", row["seeds"])
        for s in seeds:
            if seed is not None and s != seed:
                continue
            for needed in bench_rows.dependency_order(EXPERIMENTS, row_id):
                spec = row_run(needed, s)
                if not any(o["seed"] == s and o["dataset"] == spec["dataset"] and o["name"] == spec["name"] for o in out):
                    out.append(spec)
    return out


def row_run(row_id: str, seed: int) -> dict:
    """run_one's keyword arguments for one seed of a result row (experiments/ROW.yaml)."""
    row = bench_rows.load_row(EXPERIMENTS, row_id)
    spec = {"dataset": row["dataset"], "model": row["model"], "seed": seed, "name": row["name"],
            "group": row.get("group", "main"), "reuse_from": None, "row": row_id,
            "seed_config": (row.get("seed_config") or {}).get(seed, {})}
    if "config" in row:
        return {**spec, "config": f"experiments/{row_id}.yaml", "extra": [],
                "frozen": bench_rows.run_config(row, seed, RUNS)}
    command = row["command"]  # a row recorded before resolved configs: its config file and flags
    return {**spec, "config": command.get("config"), "extra": command.get("flags", []), "frozen": None}


def cmd_run(args: argparse.Namespace) -> None:
    path = ROOT / "configs" / "bench" / f"{args.suite}.yaml"
    if not path.exists():
        sys.exit(f"no suite {path}")
    try:
        runs = suite_runs(yaml.safe_load(path.read_text()) or {}, args.only, args.seed)
    except bench_rows.RowError as exc:
        sys.exit(f"{path}: {exc}")
    for spec in runs:
        run_one(**spec)


def reproduce_plan(names: list[str], seed: int | None = None) -> list[dict]:
    """What `reproduce` retrains, in order: recorded runs (TAG) as their records say, or result rows
    (DATASET/NAME) with their dependencies first. Each item: tag, dataset, the fresh command's
    arguments after --data/--out (``args``), the expected test metrics, steps and best step."""
    plan: list[dict] = []
    for name in names:
        if "/" not in name:
            if all(p["tag"] != name for p in plan):
                plan.append(_record_item(name))
            continue
        row = bench_rows.load_row(EXPERIMENTS, name)
        seeds = [seed] if seed is not None else row["seeds"]
        for s in seeds:
            if s not in row["expected"]:
                raise bench_rows.RowError(f"{row['file']}: no expected metrics for seed {s} (seeds {row['seeds']})")
            for needed in bench_rows.dependency_order(EXPERIMENTS, name):
                item = _row_item(needed, s)
                if all(p["tag"] != item["tag"] for p in plan):
                    plan.append(item)
    return plan


def _record_item(tag: str) -> dict:
    path = RESULTS / f"{tag}.json"
    if not path.exists():
        raise bench_rows.RowError(f"no record {path}")
    record = json.loads(path.read_text())
    if record.get("resolved_config"):
        frozen = write_frozen(tag, record["resolved_config"])
        args = ["--config", str(frozen)]
    else:
        args = ["--model", record["model"], "--seed", str(record["seed"])]
        if record.get("config"):
            args += ["--config", str(ROOT / record["config"])]
        args += [a.format(seed=record["seed"], runs=RUNS) for a in record.get("extra", [])]
    return {"tag": tag, "dataset": record["dataset"], "args": args, "test": record["test"],
            "steps": record["steps"], "best_step": record["best_step"], "row": None}


def _row_item(row_id: str, seed: int) -> dict:
    row = bench_rows.load_row(EXPERIMENTS, row_id)
    tag = f"{row['dataset']}-{row['name']}-s{seed}"
    config = bench_rows.run_config(row, seed, RUNS)
    args = ["--config", str(write_frozen(tag, config))] if config else bench_rows.run_flags(row, seed, RUNS, ROOT)
    expected = row["expected"].get(seed)
    if expected is None:
        raise bench_rows.RowError(f"{row['file']}: no expected metrics for seed {seed} (a dependency must have them)")
    return {"tag": tag, "dataset": row["dataset"], "args": args, "test": expected["test"],
            "steps": expected.get("steps"), "best_step": expected.get("best_step"), "row": row_id}


def cmd_reproduce(names: list[str], suffix: str = "", seed: int | None = None) -> None:
    """Retrain recorded runs or result rows into bench_runs/TAG and compare every test metric with the
    record (or the row's expected metrics); writes bench_results/reproduce/TAG.json, or
    TAG-at-COMMIT.json where a rerun made at another commit already has that name. Records and rows
    are never changed. A row's dependencies are retrained first (or compared, where their run
    directory is already finished); --suffix applies to the named runs only, not to dependencies."""
    out_dir = RESULTS / "reproduce"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        plan = reproduce_plan(names, seed)
    except bench_rows.RowError as exc:
        sys.exit(str(exc))
    named = {n for n in names if "/" not in n} | {p["tag"] for p in plan if p["row"] in names}
    for item in plan:
        _reproduce_one(item, suffix if item["tag"] in named else "", out_dir)


def _reproduce_one(item: dict, suffix: str, out_dir: Path) -> None:
    tag = item["tag"]
    run_dir = RUNS / f"{tag}{suffix}"  # a suffix retrains beside an existing run directory
    data = prepared(item["dataset"])
    if not (run_dir / "result.json").exists():
        if (run_dir / "checkpoints" / "last.pt").exists():
            cmd = DMIREC + ["train", "--resume", str(run_dir)]
        else:
            cmd = DMIREC + ["train", "--data", str(data), "--out", str(run_dir), "--progress=false"] + item["args"]
        print(f"[reproduce] {tag}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("BENCH_THREADS", "1")}
        subprocess.run(cmd, env=env, check=True)
        wall = time.perf_counter() - start
    else:
        wall = None
    result = json.loads((run_dir / "result.json").read_text())
    diffs = {k: result["test"][k] - v for k, v in item["test"].items()
             if k != "seconds" and isinstance(v, (int, float)) and k in result["test"]}
    worst = max((abs(d) for d in diffs.values()), default=0.0)
    commit = git_commit()
    row = {"tag": f"{tag}{suffix}", **({"row": item["row"]} if item["row"] else {}),
           "recorded": item["test"], "rerun": result["test"], "diff": diffs,
           "max_abs_diff": worst, "same_steps": result["steps"] == item["steps"]
           and result["best_step"] == item["best_step"],
           "resolved_config": yaml.safe_load((run_dir / "config.yaml").read_text()),
           "commit": commit, "data_fingerprint": data_fingerprint(data), "wall_s": wall,
           "machine": machine()}
    out = out_dir / f"{tag}{suffix}.json"
    if out.exists() and json.loads(out.read_text()).get("commit") != commit:
        out = out_dir / f"{tag}{suffix}-at-{(commit or 'unknown')[:7]}.json"  # keep the rerun of another commit
    out.write_text(json.dumps(row, indent=2))
    print(f"[reproduce] {tag}: max |test metric diff| {worst:.2e}, same steps: {row['same_steps']} ({out})", flush=True)


def cmd_rows(check: bool) -> None:
    """experiments/DATASET/NAME.yaml from the records (scripts/bench_rows.py); --check changes nothing
    and fails when a row file is missing, stale or differs from the records."""
    try:
        rows = bench_rows.build_rows(RESULTS)
    except bench_rows.RowError as exc:
        sys.exit(str(exc))
    changed = bench_rows.write_rows(rows, EXPERIMENTS, check=check)
    records = sum(len(r["seeds"]) for r in rows.values())
    if check and changed:
        sys.exit(f"{len(changed)} row file(s) differ from bench_results/ (run `python scripts/bench.py rows`): "
                 + ", ".join(changed))
    print(f"{len(rows)} rows from {records} records in {EXPERIMENTS}"
          + ("" if check else f" ({len(changed)} file(s) written or removed)"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("suite")
    p.add_argument("--only", default=None)
    p.add_argument("--seed", type=int, default=None, help="run only this seed of each entry (to split a suite into lanes)")
    p = sub.add_parser("report")
    p = sub.add_parser("rows", help="write experiments/DATASET/NAME.yaml from bench_results/")
    p.add_argument("--check", action="store_true", help="change nothing; fail if the row files differ from the records")
    p = sub.add_parser("reproduce")
    p.add_argument("tags", nargs="+", metavar="TAG|ROW", help="a record (DATASET-NAME-sSEED) or a row (DATASET/NAME)")
    p.add_argument("--seed", type=int, default=None, help="only this seed of each row")
    p.add_argument("--suffix", default="", help="train into bench_runs/TAG+SUFFIX (beside an existing run)")
    args = parser.parse_args()
    if args.cmd == "run":
        cmd_run(args)
    elif args.cmd == "rows":
        cmd_rows(args.check)
    elif args.cmd == "reproduce":
        cmd_reproduce(args.tags, args.suffix, args.seed)
    else:
        from bench_report import write_report  # scripts/bench_report.py

        write_report(RESULTS, ROOT / "BENCHMARKS.md")
