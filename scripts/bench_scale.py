#!/usr/bin/env python
"""Scale benchmark: training speed against catalogue size (dense vs sparse item-table updates),
data-parallel training (torchrun, 2 gloo ranks vs 1 process) and the TorchRec sharded item table.

    python scripts/bench_scale.py speed [--items 12000,300000,1000000] [--steps 200] [--model remi]
    python scripts/bench_scale.py ddp [--items 12000] [--steps 600]
    python scripts/bench_scale.py prepare [--preset books] [--modes stream,memory]
    python scripts/bench_scale.py books [--model remi] [--max_steps 100000]
    python scripts/bench_scale.py sharded [--items 12000] [--steps 600] [--arms 1,ddp,sharded]   # needs `dist`

``speed``: for every catalogue size, a synthetic prepared dataset (:mod:`dmirec.data.synth_log`,
``--users`` users, 20,000 by default, item ids as generated) and, for each path (dense Adam /
sparse SparseAdam), one child process with one torch thread that times ``--steps`` full training
steps (batch sampling, forward, sampled softmax over the config's shared negatives, backward,
optimiser) after a warm-up, with the model's default config (REMI: D=64, K=4, batch 128, 1,280
negatives), in 5 blocks; it reports the fastest block (the machine is shared: the least
disturbed block is the closest to the step's own cost; every block's time is recorded) and
reports its peak RSS. ``ddp``: the same `dmirec train` (one thread per rank) with 1 process and
with 2 torchrun ranks at the same global batch; records the validation loss/recall curve, the
test metrics and the training seq/s of each.

``books``: the Books-scale synthetic log (preset ``books``, 460k users, 310k items, ~9.3M rows),
prepared with ``--stream``, then ``dmirec train`` of ``--model`` at its defaults with
``--valid_users 2000`` and one thread until early stopping (or ``--max_steps``), and
most-popular on the same split: wall time, seq/s, peak RSS of each child, test metrics.

``sharded``: the same `dmirec train` as ``ddp`` three times on the same data, global batch, seed
and step budget: 1 process, 2 torchrun ranks (plain DDP) and 2 ranks with
``--sharded_embeddings=true`` (the item table sharded row-wise by TorchRec; the other two start from
the same blocked initial table, ``--table_init=blocked``); ``--arms`` picks some of them, or adds
``fused`` (sharded, updated by TorchRec's fused row-wise Adagrad). Records each one's
loss/recall curve, test metrics, training seq/s and every process's peak RSS (each rank reports
its own ``ru_maxrss`` when it finishes).

``prepare``: writes the preset's synthetic log (``--format`` parquet or csv) and times ``dmirec prepare`` on it in a
child process per mode (``--stream`` or the in-memory reader), reporting wall time and the
child's peak RSS (also per 10M rows); both outputs are compared file by file.

Results are merged into bench_results/scale.json (resolved config, git commit, machine, seed,
wall time per entry) and printed as markdown tables. Run it alone: throughput on a shared
machine is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench import DATA, RESULTS, machine  # noqa: E402
from bench import git_commit as bench_git_commit  # noqa: E402

OUT = RESULTS / "scale.json"
SRC = ROOT / "src"


def git_commit() -> str:
    """HEAD, with ``-dirty`` when tracked code differs from it (:func:`bench.git_commit`: the records
    in bench_results/ do not count), or ``DMIREC_COMMIT`` in a copy without .git (a GPU machine)."""
    return bench_git_commit() or os.environ.get("DMIREC_COMMIT", "unknown")


def synth_data(items: int, users: int = 20_000, seed: int = 0) -> Path:
    from dmirec.data.synth_log import LogSpec, write_prepared_direct

    out = DATA / f"synth-{items}-u{users}-s{seed}"
    if not (out / "meta.json").exists():
        spec = LogSpec(users=users, items=items, clusters=max(10, items // 300), seed=seed)
        write_prepared_direct(spec, out, name=f"synth-{items}")
    return out


def speed_one(args: argparse.Namespace) -> None:
    """Child process: time the training step on one catalogue with one path; print a JSON line."""
    import torch

    from dmirec.training import optim
    from dmirec.data.dataset import load_dataset
    from dmirec.data.sampler import TrainSampler
    from dmirec.objectives.losses import NegativeSampler
    from dmirec.models import build_model
    from dmirec.training.train import make_config, make_optimizer, train_step

    torch.set_num_threads(args.threads)
    data = load_dataset(synth_data(args.items, args.users), mmap=True)
    cfg = make_config(args.model, overrides={"progress": False, "embedding_optimizer": args.path,
                                             "threads": args.threads, "device": args.device, "seed": 0,
                                             "bf16": bool(args.bf16), "compile": bool(args.compile),
                                             **({"batch_size": args.batch_size} if args.batch_size else {})})
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(cfg, data.num_items, data.item_popularity()).to(device)
    optim.setup_table(model, cfg, data.num_items)  # as train() does in one process
    sampler = TrainSampler(data.splits["train"], cfg.batch_size, cfg.seq_len, cfg.min_cut, seed=0)
    negatives = NegativeSampler(data.num_items, cfg.negative_sampler, device)
    gen = torch.Generator(device=device).manual_seed(1)
    opt = make_optimizer(model, cfg)
    model.train()
    losses = []

    def step() -> None:  # the package's one training step
        losses.append(float(train_step(model, opt, cfg, sampler.sample(), negatives, gen, device).detach()))

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    blocks = []  # seconds per block of steps: the best block is the least disturbed by other load
    per_block = max(1, args.steps // 5)
    for _ in range(max(1, args.steps // per_block)):
        start = time.perf_counter()
        for _ in range(per_block):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        blocks.append((time.perf_counter() - start) / per_block)
    seconds = min(blocks)
    print(json.dumps({"items": args.items, "users": args.users, "interactions": int(sum(
                          len(data.splits[s].items) for s in data.splits)), "path": args.path, "model": args.model, "steps": per_block * len(blocks),
                      "seq_per_s": cfg.batch_size / seconds, "ms_per_step": 1000 * seconds,
                      "ms_per_step_blocks": [1000 * b for b in blocks],
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "first_loss": losses[0], "last_loss": sum(losses[-20:]) / len(losses[-20:]),
                      "config": cfg.to_dict()}))


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def cmd_speed(args: argparse.Namespace) -> list[dict]:
    rows = []
    for items in [int(x) for x in args.items.split(",")]:
        synth_data(items, args.users)
        for path in args.paths.split(","):
            start = time.perf_counter()
            cmd = [sys.executable, __file__, "_speed_one", "--items", str(items), "--path", path, "--model", args.model,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                   "--device", args.device, "--bf16", str(int(args.bf16)), "--users", str(args.users),
                   "--compile", str(int(args.compile)), "--batch_size", str(args.batch_size)]
            proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["wall_seconds"] = time.perf_counter() - start
            print(f"{args.model} {items:>9,} items {path:>6}: {row['seq_per_s']:8.0f} seq/s "
                  f"({row['ms_per_step']:.1f} ms/step), peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)
            rows.append(row)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_ddp(args: argparse.Namespace) -> list[dict]:
    data = synth_data(args.items)
    return [train_ranks(args, data, ROOT / "bench_runs" / "scale-ddp", f"{ranks} process(es)", ranks, [])
            for ranks in (1, 2)]


def train_ranks(args: argparse.Namespace, data: Path, work: Path, name: str, ranks: int, extra: list[str]) -> dict:
    """One `dmirec train` (one thread per rank) with ``ranks`` torchrun processes (1 = plain
    process) on ``data``: seq/s, validation curve, test metrics and every rank's peak RSS."""
    import shutil

    import yaml

    run = work / f"{args.model}-{args.items}-{name.replace(' ', '').replace(',', '-').replace('(', '').replace(')', '')}"
    rss_dir = run.with_name(run.name + "-rss")
    for path in (run, rss_dir):
        if path.exists():
            shutil.rmtree(path)
    rss_dir.mkdir(parents=True)
    train_args = ["--data", str(data), "--model", args.model, "--out", str(run), "--device", "cpu",
                  f"--max_steps={args.steps}", f"--eval_every={args.eval_every}", "--patience=1000",
                  f"--valid_users={args.valid_users}", "--threads=1", "--progress=false", "--seed=0", *extra]
    child = [__file__, "_rank_train", "--rss_dir", str(rss_dir), "--", *train_args]
    cmd = [sys.executable, *child] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", *child]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    wall = time.perf_counter() - start
    result = json.loads((run / "result.json").read_text())
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [{k: r[k] for k in ("step", "loss", "recall@50")} for r in curve if r["split"] == "valid"]
    rss = [json.loads((rss_dir / f"rank-{r}.json").read_text())["peak_rss_mib"] for r in range(ranks)]
    row = {"name": name, "ranks": ranks, "sharded": "--sharded_embeddings=true" in extra, "items": args.items,
           "model": args.model, "steps": result["steps"], "train_seq_per_s": result["train_seq_per_s"],
           "test": result["test"], "curve": curve, "peak_rss_mib_per_rank": rss, "wall_seconds": wall,
           "config": yaml.safe_load((run / "config.yaml").read_text())}
    print(f"{args.model} {name}: {row['train_seq_per_s']:.0f} seq/s, test R@50 {result['test']['recall@50']:.4f}, "
          f"peak RSS {' / '.join(f'{x:.0f}' for x in rss)} MiB, wall {wall:.0f} s", flush=True)
    return row


def rank_train(args: argparse.Namespace, train_args: list[str]) -> None:
    """Child (a torchrun rank or the single process): ``dmirec train``, then this process's peak RSS
    written to ``RSS_DIR/rank-R.json``."""
    from dmirec.cli.main import main as dmirec_main

    rc = dmirec_main(["train", *train_args])
    rank = int(os.environ.get("RANK", "0") or 0)
    Path(args.rss_dir, f"rank-{rank}.json").write_text(json.dumps(
        {"rank": rank, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    if rc:
        raise SystemExit(rc)


def cmd_sharded(args: argparse.Namespace) -> list[dict]:
    data = synth_data(args.items)
    work = ROOT / "bench_runs" / "scale-sharded"
    same_start = ["--table_init=blocked"]  # the sharded run's initial table, drawn whole by the unsharded arms
    arms = {"1": ("1 process", 1, same_start), "ddp": ("2 ranks, DDP", 2, same_start),
            "sharded": ("2 ranks, sharded table", 2, ["--sharded_embeddings=true"]),
            "fused": ("2 ranks, sharded table, fused row-wise Adagrad", 2,
                      ["--sharded_embeddings=true", "--embedding_optimizer=rowwise_adagrad"])}
    return [train_ranks(args, data, work, *arms[a]) for a in args.arms.split(",")]


def table_sharded(rows: list[dict]) -> str:
    steps = [p["step"] for p in rows[0]["curve"]]
    lines = ["| run | seq/s | test R@50 | test HR@50 | " + " | ".join(f"loss@{s}" for s in steps)
             + " | peak RSS per rank (MiB) |", "|---|---:|---:|---:|" + "---:|" * len(steps) + "---:|"]
    for r in rows:
        losses = {p["step"]: p["loss"] for p in r["curve"]}
        lines.append(f"| {r['name']} | {r['train_seq_per_s']:.0f} | {r['test']['recall@50']:.4f} | "
                     f"{r['test']['hitrate@50']:.4f} | " + " | ".join(f"{losses.get(s, float('nan')):.3f}" for s in steps)
                     + " | " + " / ".join(f"{x:.0f}" for x in r["peak_rss_mib_per_rank"]) + " |")
    return "\n".join(lines)


def cmd_prepare(args: argparse.Namespace) -> list[dict]:
    from dmirec.data.synth_log import spec_from, write_log

    work = ROOT / "bench_runs" / "scale-prepare"
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"{args.preset}.{args.format}"
    record = write_log(spec_from(args.preset), log)
    rows = []
    for mode in args.modes.split(","):
        out = work / f"{args.preset}-{args.format}-{mode}"
        wall, rss = _dmirec_child(["prepare", str(log), str(out)] + (["--stream"] if mode == "stream" else []))
        row = {"mode": mode, "preset": args.preset, "format": args.format, "rows": record["rows"], "wall_seconds": float(wall),
               "peak_rss_mib": float(rss), "peak_rss_mib_per_10m_rows": float(rss) * 1e7 / record["rows"],
               "spec": record["spec"]}
        print(f"prepare {mode:>6}: {record['rows']:,} rows, {float(wall):.0f} s, peak RSS {float(rss):.0f} MiB",
              flush=True)
        rows.append(row)
    if len(rows) == 2:
        a, b = (work / f"{args.preset}-{args.format}-{r['mode']}" for r in rows)
        same = all((a / f.name).read_bytes() == (b / f.name).read_bytes()
                   for f in a.iterdir() if f.name != "meta.json")
        for r in rows:
            r["outputs_identical"] = same
        print(f"outputs identical (arrays, id maps): {same}")
    return rows


def _dmirec_child(argv: list[str]) -> tuple[float, float]:
    """Run ``dmirec ARGV`` in a child process: (wall seconds, the child's peak RSS in MiB)."""
    code = ("import resource, sys, time\n"
            "from dmirec.cli.main import main\n"
            "t = time.perf_counter()\n"
            f"rc = main({argv!r})\n"
            "print('RESULT', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"dmirec {' '.join(argv)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    _, wall, rss = proc.stdout.strip().splitlines()[-1].split()
    return float(wall), float(rss)


def cmd_books(args: argparse.Namespace) -> list[dict]:
    from dmirec.data.synth_log import spec_from, write_log

    work = ROOT / "bench_runs" / "scale-books"
    work.mkdir(parents=True, exist_ok=True)
    log, data = work / f"{args.preset}.parquet", DATA / f"synth-{args.preset}"
    rows = []
    if not Path(f"{log}.json").exists():  # written after the log itself
        write_log(spec_from(args.preset), log)
    if not (data / "meta.json").exists():
        wall, rss = _dmirec_child(["prepare", str(log), str(data), "--stream"])
        rows.append({"step": "prepare --stream", "wall_seconds": wall, "peak_rss_mib": rss})
    for model in (args.model, "most-popular"):
        run = work / f"{args.preset}-{model}-s{args.seed}"
        if run.exists():
            import shutil

            shutil.rmtree(run)
        wall, rss = _dmirec_child(["train", "--data", str(data), "--model", model, "--out", str(run),
                                   "--seed", str(args.seed), "--valid_users=2000", "--threads=1",
                                   "--progress=false", f"--max_steps={args.max_steps}"])
        result = json.loads((run / "result.json").read_text())
        import yaml

        rows.append({"step": f"train {model}", "wall_seconds": wall, "peak_rss_mib": rss,
                     "steps": result.get("steps"), "best_step": result.get("best_step"),
                     "stopped": result.get("stopped"), "train_seq_per_s": result.get("train_seq_per_s"),
                     "test": result["test"], "config": yaml.safe_load((run / "config.yaml").read_text())})
        print(f"{model}: {wall:.0f} s, steps {result.get('steps')} (best {result.get('best_step')}, "
              f"{result.get('stopped')}), test R@50 {result['test']['recall@50']:.4f}, peak RSS {rss:.0f} MiB",
              flush=True)
    return rows


def table_books(rows: list[dict]) -> str:
    lines = ["| step | wall (s) | peak RSS (MiB) | steps (best) | stopped | train seq/s | test R@20 | test R@50 | test HR@50 |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        t = r.get("test")
        cells = (f"{r['steps']} ({r['best_step']}) | {r['stopped']} | {r.get('train_seq_per_s') or 0:,.0f} | "
                 f"{t['recall@20']:.4f} | {t['recall@50']:.4f} | {t['hitrate@50']:.4f}") if t else "- | - | - | - | - | -"
        lines.append(f"| {r['step']} | {r['wall_seconds']:.0f} | {r['peak_rss_mib']:.0f} | {cells} |")
    return "\n".join(lines)


def table_prepare(rows: list[dict]) -> str:
    lines = ["| log | reader | rows | wall (s) | peak RSS (MiB) | MiB per 10M rows |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['format']} | {r['mode']} | {r['rows']:,} | {r['wall_seconds']:.0f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['peak_rss_mib_per_10m_rows']:.0f} |")
    return "\n".join(lines)


def table_speed(rows: list[dict]) -> str:
    base = {r["path"]: r["seq_per_s"] for r in rows if r["items"] == min(x["items"] for x in rows)}
    lines = ["| items | path | seq/s | ms/step | vs smallest catalogue | peak RSS (MiB) |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        rel = r["seq_per_s"] / base[r["path"]] if r["path"] in base else float("nan")
        lines.append(f"| {r['items']:,} | {r['path']} | {r['seq_per_s']:.0f} | {r['ms_per_step']:.1f} | "
                     f"{rel:.0%} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def table_ddp(rows: list[dict]) -> str:
    steps = [p["step"] for p in rows[0]["curve"]]
    lines = ["| ranks | seq/s | test R@50 | test HR@50 | " + " | ".join(f"loss@{s}" for s in steps) + " |",
             "|---:|---:|---:|---:|" + "---:|" * len(steps)]
    for r in rows:
        losses = {p["step"]: p["loss"] for p in r["curve"]}
        lines.append(f"| {r['ranks']} | {r['train_seq_per_s']:.0f} | {r['test']['recall@50']:.4f} | "
                     f"{r['test']['hitrate@50']:.4f} | " + " | ".join(f"{losses.get(s, float('nan')):.3f}"
                                                                       for s in steps) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--items", default="12000,300000,1000000")
    s.add_argument("--paths", default="dense,sparse")
    s.add_argument("--model", default="remi")
    s.add_argument("--steps", type=int, default=200)
    s.add_argument("--warmup", type=int, default=20)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--device", default="cpu")
    s.add_argument("--bf16", action="store_true", help="bfloat16 autocast of forward and loss")
    s.add_argument("--compile", action="store_true", help="compile=true (torch.compile of the step's loss)")
    s.add_argument("--batch_size", type=int, default=0, help="training batch (0: the config's, 128)")
    s.add_argument("--users", type=int, default=20_000, help="synthetic users (about 20 interactions each)")
    s.add_argument("--tag", default=None, help="key in scale.json (default: speed-DEVICE)")
    o = sub.add_parser("_speed_one")
    for name, kind in (("--items", int), ("--path", str), ("--model", str), ("--steps", int), ("--warmup", int),
                       ("--threads", int), ("--device", str), ("--bf16", int), ("--users", int), ("--compile", int),
                       ("--batch_size", int)):
        o.add_argument(name, type=kind, required=True)
    d = sub.add_parser("ddp")
    d.add_argument("--items", type=int, default=12000)
    d.add_argument("--model", default="remi")
    d.add_argument("--steps", type=int, default=600)
    d.add_argument("--eval_every", type=int, default=150)
    d.add_argument("--valid_users", type=int, default=1000)
    h = sub.add_parser("sharded")
    h.add_argument("--items", type=int, default=12000)
    h.add_argument("--model", default="remi")
    h.add_argument("--steps", type=int, default=600)
    h.add_argument("--eval_every", type=int, default=150)
    h.add_argument("--valid_users", type=int, default=1000)
    h.add_argument("--arms", default="1,ddp,sharded", help="which of 1 (one process), ddp, sharded, fused to run")
    h.add_argument("--tag", default=None, help="key in scale.json (default: sharded-MODEL-ITEMS)")
    t = sub.add_parser("_rank_train")
    t.add_argument("--rss_dir", required=True)
    r = sub.add_parser("prepare")
    r.add_argument("--preset", default="books")
    r.add_argument("--modes", default="stream,memory")
    r.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    b = sub.add_parser("books")
    b.add_argument("--model", default="remi")
    b.add_argument("--preset", default="books")
    b.add_argument("--seed", type=int, default=2021)
    b.add_argument("--max_steps", type=int, default=300_000, help="a ceiling: the run stops early (patience)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_rank_train"]:  # the rest after "--" is dmirec train's own arguments
        cut = argv.index("--")
        rank_train(p.parse_args(argv[:cut]), argv[cut + 1:])
        return 0
    args = p.parse_args(argv)
    if args.cmd == "_speed_one":
        speed_one(args)
        return 0
    start = time.perf_counter()
    load_before = os.getloadavg()
    rows = {"speed": cmd_speed, "ddp": cmd_ddp, "prepare": cmd_prepare, "books": cmd_books, "sharded": cmd_sharded}[args.cmd](args)
    record = {"commit": git_commit(), "machine": machine(), "seed": 0, "argv": sys.argv[1:],
              "wall_seconds": time.perf_counter() - start, "rows": rows,
              "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    key = {"speed": lambda: args.tag or f"speed-{args.device}", "ddp": lambda: f"ddp-{args.model}-{args.items}",
           "prepare": lambda: f"prepare-{args.preset}-{args.format}",
           "books": lambda: f"{args.preset}-{args.model}-s{args.seed}",
           "sharded": lambda: args.tag or f"sharded-{args.model}-{args.items}"}[args.cmd]()
    results[key] = record
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print({"speed": table_speed, "ddp": table_ddp, "prepare": table_prepare, "books": table_books,
           "sharded": table_sharded}[args.cmd](rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
