#!/usr/bin/env python
"""The two hot paths of a training run, measured: the training step and the validation pass.

    python scripts/bench_hotpath.py step [--base SRC] [--models comirec-sa,remi] [--dataset beauty] [--steps 2000] [--rounds 3]
    python scripts/bench_hotpath.py validate [--datasets beauty,gowalla,sports,synth-books] [--rounds 3]
    python scripts/bench_hotpath.py bank [--base SRC] [--users 36000] [--queries 4096] [--n 16]
    python scripts/bench_hotpath.py profile [--model remi] [--dataset beauty] [--base SRC]
    python scripts/bench_hotpath.py report

``step``: training sequences/s on beauty (or ``--dataset``) at the reference settings
(configs/DATASET/MODEL.yaml: on beauty batch 128, 1,280 shared negatives, seq_len 20), one thread,
the package's full step (``dmirec.training.train.train_step``: batch sampling, forward, loss, backward, Adam)
after a warm-up; a model that reads an interest bank (COIN, collaborative DMI) gets the bank of its
initial weights first, as a training run does. With
``--base SRC`` (the ``src`` folder of another checkout, e.g. a ``git worktree`` of an older
commit) the same measurement runs on that code too, the two alternating round by round (paired),
so the ratio is measured under the same machine load. Each measurement is a fresh process.
``--compile`` adds this tree with ``compile=true`` (:mod:`dmirec.training.compiled`) to the
alternation; its compile time is in the warm-up, not in the timed steps.

``bank``: one exact search of a random interest bank (36,000 users x 4 interests, 4,096 queries,
n = 16, one thread; ``dmirec.collab.neighbours.InterestBank.search``), with a digest of its output so
that two trees can be checked to return the same neighbours bit for bit.

``validate``: one validation pass (``dmirec.evaluation.evaluate.evaluate_model`` on the valid split: user
vectors, exact top-50 over the whole catalogue, metrics) of a freshly initialised REMI, per
retrieval backend, one thread; synth-books (``bench_scale.py books`` makes it) uses the fixed
sample of 2,000 validation users that its training run validates on. Also with ``--base``.

``profile``: the torch profiler's table of 300 training steps (ops grouped by input shape), the
milliseconds per step by group of operations (matrix products, the optimiser, gathers and
scatters, fills and copies, other elementwise work and reductions) with the number of operations
per step and the time per step without the profiler, and the share of padding among the batch
positions of a dataset; printed, not recorded.

Results go to bench_results/hotpath.json (key ``--tag``, default the subcommand) with the machine,
commits, arguments and every round; ``report`` prints the tables that BENCHMARKS.md carries. Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import DATA, RESULTS, ROOT, git_commit, machine

OUT = RESULTS / "hotpath.json"

STEP_CHILD = r"""
import json, sys, time, torch
from dmirec.training import optim
from dmirec.data.dataset import load_dataset
from dmirec.data.sampler import TrainSampler
from dmirec.objectives.losses import NegativeSampler
from dmirec.models import build_model
from dmirec.training.train import make_config, make_optimizer, train_step
data_dir, config, model_name, steps, warmup = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
extra = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
torch.set_num_threads(1)
data = load_dataset(data_dir)
cfg = make_config(model_name, [config], {"progress": False, **extra})
torch.manual_seed(0)
model = build_model(cfg, data.num_items, data.item_popularity())
if hasattr(optim, "setup_table"):  # what train() does (older trees: set_sparse only)
    optim.setup_table(model, cfg, data.num_items)
else:
    optim.set_sparse(model, optim.use_sparse(cfg, data.num_items))
sampler = TrainSampler(data.splits["train"], cfg.batch_size, cfg.seq_len, cfg.min_cut, seed=0)
negatives = NegativeSampler(data.num_items, cfg.negative_sampler)
gen = torch.Generator().manual_seed(1)
opt = make_optimizer(model, cfg)
has_bank = getattr(model, "bank", None) is not None
if has_bank:  # what train() does before its first step
    from dmirec.collab.neighbours import fill_bank
    fill_bank(model, cfg, data.splits["train"])
model.train()
for i in range(warmup + steps):
    if i == warmup:
        start = time.perf_counter()
    train_step(model, opt, cfg, sampler.sample(), negatives, gen, "cpu", use_users=has_bank)
print(json.dumps({"seq_per_s": cfg.batch_size * steps / (time.perf_counter() - start)}))
"""

VALID_CHILD = r"""
import json, sys, time, torch
from dmirec.data.dataset import load_dataset
from dmirec.data.sampler import valid_split
from dmirec.evaluation.evaluate import evaluate_model, metric_cutoffs
from dmirec.models import build_model
from dmirec.training.train import make_config
data_dir, backend, valid_users = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
data = load_dataset(data_dir, mmap=True)
cfg = make_config("remi", overrides={"progress": False, "valid_users": valid_users})
torch.manual_seed(0)
model = build_model(cfg, data.num_items, data.item_popularity())
model.eval()
eval_set = valid_split(data.splits["valid"], cfg)
evaluate_model(model, data, "valid", cfg.seq_len, metric_cutoffs(cfg), backend, eval_set=eval_set)  # warm-up
start = time.perf_counter()
m = evaluate_model(model, data, "valid", cfg.seq_len, metric_cutoffs(cfg), backend, eval_set=eval_set)
print(json.dumps({"seconds": time.perf_counter() - start, "users": len(eval_set.targets), "items": data.num_items,
                  "recall@50": m["recall@50"]}))
"""


BANK_CHILD = r"""
import hashlib, json, sys, time, torch
from dmirec.collab.neighbours import InterestBank
users, queries, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
bank = InterestBank(64, 4)
bank.vectors, bank.owners = torch.randn(users, 4, 64, generator=gen), torch.arange(users)
q, exclude = torch.randn(queries, 64, generator=gen), torch.randint(0, users, (queries,), generator=gen)
bank.search(q[:64], n, exclude[:64])  # warm-up
start = time.perf_counter()
vectors, sims, found = bank.search(q, n, exclude)
seconds = time.perf_counter() - start
digest = hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in (vectors, sims, found))).hexdigest()
print(json.dumps({"seconds": seconds, "digest": digest}))
"""


PROFILE_CHILD = STEP_CHILD.split("model.train()")[0] + r"""
import numpy as np
from torch.profiler import ProfilerActivity, profile
model.train()
for _ in range(warmup):
    train_step(model, opt, cfg, sampler.sample(), negatives, gen, "cpu", use_users=has_bank)
plain = time.perf_counter()
for _ in range(steps):  # the same steps without the profiler: the real time per step
    train_step(model, opt, cfg, sampler.sample(), negatives, gen, "cpu", use_users=has_bank)
plain = (time.perf_counter() - plain) / steps
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    for _ in range(steps):
        train_step(model, opt, cfg, sampler.sample(), negatives, gen, "cpu", use_users=has_bank)
print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25,
                                                         max_name_column_width=32, max_shapes_column_width=60))
GROUPS = {"matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"),
          "optimiser": ("aten::_fused_adam_", "aten::_foreach_", "Optimizer."),
          "gathers and scatters": ("aten::index", "aten::embedding", "aten::nonzero", "aten::gather",
                                   "aten::scatter", "aten::_index_put_impl_", "aten::_sparse_", "aten::sparse_",
                                   "aten::coalesce", "aten::_coalesce"),
          "fills and copies": ("aten::fill_", "aten::zero_", "aten::copy_", "aten::_to_copy", "aten::empty",
                               "aten::zeros", "aten::clone", "aten::cat", "aten::new_"),
          "elementwise and reductions": ("aten::",)}
summary, ops = {k: 0.0 for k in GROUPS}, 0
for e in prof.key_averages():
    if e.key.startswith("aten::"):
        ops += e.count
    for group, prefixes in GROUPS.items():
        if e.key.startswith(prefixes):
            summary[group] += e.self_cpu_time_total / steps / 1000  # ms per step
            break
kernels = sum(summary.values())
print(json.dumps({"ms_per_step_without_profiler": 1000 * plain, "aten_ops_per_step": ops / steps,
                  "ms_per_step_by_group_profiled": {k: round(v, 3) for k, v in summary.items()},
                  "ms_per_step_profiled_total": prof.key_averages().self_cpu_time_total / steps / 1000,
                  "ms_per_step_outside_ops_profiled": round(
                      prof.key_averages().self_cpu_time_total / steps / 1000 - kernels, 3)}, indent=1))
padding = 1 - np.mean([sampler.sample().mask.mean() for _ in range(200)])
print(json.dumps({"padding_share_of_positions": float(padding)}))
"""


def tree_commit(src: Path) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def child(src: Path, code: str, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"measurement failed ({src}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def trees(args: argparse.Namespace) -> dict[str, Path]:
    named = {"this": ROOT / "src"}
    if getattr(args, "compile", False):
        named["this-compiled"] = ROOT / "src"
    if args.base:
        named["base"] = Path(args.base).resolve()
    return named


def tree_overrides(name: str) -> dict:
    """Config overrides of a measured variant: the compiled variant of this tree sets ``compile``."""
    return {"compile": True} if name == "this-compiled" else {}


def cmd_step(args: argparse.Namespace) -> dict:
    rows = []
    for model in args.models.split(","):
        config = ROOT / "configs" / args.dataset / f"{model}.yaml"
        rounds: dict[str, list[float]] = {name: [] for name in trees(args)}
        for r in range(args.rounds):
            for name, src in trees(args).items():
                got = child(src, STEP_CHILD, [str(DATA / args.dataset), str(config), model, str(args.steps),
                                              str(args.warmup), json.dumps(tree_overrides(name))])
                rounds[name].append(got["seq_per_s"])
                print(f"{model} round {r} {name}: {got['seq_per_s']:.0f} seq/s", flush=True)
        rows.append({"model": model, "rounds": rounds,
                     "median": {k: statistics.median(v) for k, v in rounds.items()}})
    return {"rows": rows}


def cmd_validate(args: argparse.Namespace) -> dict:
    rows = []
    for dataset in args.datasets.split(","):
        users = 2000 if dataset.startswith("synth") else 0
        for backend in args.backends.split(","):
            rounds: dict[str, list[float]] = {name: [] for name in trees(args)}
            info = {}
            for r in range(args.rounds):
                for name, src in trees(args).items():
                    got = child(src, VALID_CHILD, [str(DATA / dataset), backend, str(users)])
                    rounds[name].append(got["seconds"])
                    info = {"users": got["users"], "items": got["items"], "recall@50": got["recall@50"]}
                    print(f"{dataset} {backend} round {r} {name}: {got['seconds']:.3f} s", flush=True)
            rows.append({"dataset": dataset, "backend": backend, **info, "rounds": rounds,
                         "best": {k: min(v) for k, v in rounds.items()}})
    return {"rows": rows}


def cmd_bank(args: argparse.Namespace) -> dict:
    rounds: dict[str, list[float]] = {name: [] for name in trees(args)}
    digests: dict[str, str] = {}
    for r in range(args.rounds):
        for name, src in trees(args).items():
            got = child(src, BANK_CHILD, [str(args.users), str(args.queries), str(args.n)])
            rounds[name].append(got["seconds"])
            digests[name] = got["digest"]
            print(f"bank round {r} {name}: {got['seconds']:.3f} s", flush=True)
    return {"rows": [{"users": args.users, "queries": args.queries, "n": args.n, "rounds": rounds,
                      "best": {k: min(v) for k, v in rounds.items()}, "digest": digests}]}


def table_bank(rec: dict) -> str:
    row = rec["rows"][0]
    base = "base" in row["best"]
    lines = ["| bank users x K | queries | n | this tree (s) |" + (" base tree (s) | same output |" if base else ""),
             "|---|---:|---:|---:|" + ("---:|---|" if base else "")]
    line = f"| {row['users']:,} x 4 | {row['queries']:,} | {row['n']} | {row['best']['this']:.3f} |"
    if base:
        line += f" {row['best']['base']:.3f} | {row['digest']['this'] == row['digest']['base']} |"
    return "\n".join(lines + [line])


def cmd_profile(args: argparse.Namespace) -> None:
    """Print the torch profiler's table of ``--steps`` training steps (this tree, or ``--base``) and
    the share of padding among a dataset's batch positions; nothing is recorded."""
    src = Path(args.base).resolve() if args.base else ROOT / "src"
    config = ROOT / "configs" / args.dataset / f"{args.model}.yaml"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", PROFILE_CHILD, str(DATA / args.dataset), str(config), args.model,
                    str(args.steps), "50"], env=env, cwd=ROOT, check=True)


def table_step(rec: dict) -> str:
    base = "base" in rec["rows"][0]["median"]
    compiled = "this-compiled" in rec["rows"][0]["median"]
    head = "| model | this tree (seq/s) |" + (" compiled (seq/s) |" if compiled else "") + \
        (" base tree (seq/s) | speed-up |" if base else "")
    lines = [head, "|---|---:|" + ("---:|" if compiled else "") + ("---:|---:|" if base else "")]
    for row in rec["rows"]:
        med = row["median"]
        line = f"| {row['model']} | {med['this']:,.0f} |"
        if compiled:
            line += f" {med['this-compiled']:,.0f} |"
        if base:
            line += f" {med['base']:,.0f} | {med['this'] / med['base']:.2f}x |"
        lines.append(line)
    return "\n".join(lines)


def table_validate(rec: dict) -> str:
    base = "base" in rec["rows"][0]["best"]
    lines = ["| dataset | users x items | backend | this tree (s) |" + (" base tree (s) |" if base else ""),
             "|---|---|---|---:|" + ("---:|" if base else "")]
    for row in rec["rows"]:
        best = row["best"]
        line = f"| {row['dataset']} | {row['users']:,} x {row['items']:,} | {row['backend']} | {best['this']:.3f} |"
        if base:
            line += f" {best['base']:.3f} |"
        lines.append(line)
    return "\n".join(lines)


def report() -> str:
    records = json.loads(OUT.read_text()) if OUT.exists() else {}
    parts = []
    for key, rec in records.items():
        parts.append(f"### `{key}`: commit {str(rec['commit'])[:8]}, base {str(rec.get('base_commit'))[:8]}, "
                     f"{rec['machine']['cpu']}, wall {rec['wall_seconds']:.0f} s\n")
        table = {"step": table_step, "validate": table_validate, "bank": table_bank}[rec["kind"]]
        parts.append(table(rec))
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("--models", default="comirec-sa,remi")
    s.add_argument("--dataset", default="beauty")
    s.add_argument("--steps", type=int, default=2000)
    s.add_argument("--warmup", type=int, default=50)
    s.add_argument("--compile", action="store_true", help="also measure this tree with compile=true (alternating)")
    v = sub.add_parser("validate")
    v.add_argument("--datasets", default="beauty,gowalla,sports,synth-books")
    v.add_argument("--backends", default="torch,faiss")
    k = sub.add_parser("bank")
    k.add_argument("--users", type=int, default=36_000)
    k.add_argument("--queries", type=int, default=4096)
    k.add_argument("--n", type=int, default=16)
    for q in (s, v, k):
        q.add_argument("--base", default=None, help="src folder of another checkout, measured alternately")
        q.add_argument("--rounds", type=int, default=3)
        q.add_argument("--tag", default=None)
    f = sub.add_parser("profile")
    f.add_argument("--model", default="remi")
    f.add_argument("--dataset", default="beauty")
    f.add_argument("--steps", type=int, default=300)
    f.add_argument("--base", default=None, help="profile another checkout's src instead")
    sub.add_parser("report")
    args = p.parse_args(argv)
    if args.cmd == "report":
        print(report())
        return 0
    if args.cmd == "profile":
        cmd_profile(args)
        return 0
    start = time.perf_counter()
    rec = {"step": cmd_step, "validate": cmd_validate, "bank": cmd_bank}[args.cmd](args)
    rec.update(kind=args.cmd, commit=git_commit(), base_commit=tree_commit(Path(args.base)) if args.base else None,
               machine=machine(), args=vars(args), wall_seconds=time.perf_counter() - start)
    records = json.loads(OUT.read_text()) if OUT.exists() else {}
    records[args.tag or args.cmd] = rec
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(records, indent=2) + "\n")
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
