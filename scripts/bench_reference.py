#!/usr/bin/env python
"""dmirec's training speed against the public REMI code (github.com/Tokkiu/REMI), side by side.

    python scripts/bench_reference.py --ref PATH [--pairs 5] [--steps 2000] [--warmup 50]
                                      [--dataset beauty] [--no-validate] [--keep] [--out FILE]

``--ref`` is a checkout of github.com/Tokkiu/REMI, kept outside this repository; nothing of it is
stored here. The script

1. writes the prepared dataset (``bench_data/DATASET``, made by ``scripts/bench.py``) in the
   reference code's input format, ``data/DATASET_data/DATASET_{train,valid,test}.txt`` with lines
   ``user,item,index,timestamp`` (the files ``dmirec prepare --comirec-files`` writes): the same
   users in each split and the same item ids, so both codes train on the same data;
2. copies the checkout into a temporary folder and changes it by exact text substitutions
   (:data:`CHANGES`), each of which stops the script with a one-line message naming the file and
   the missing text when its target is not found exactly as often as expected. The changes make it
   run on a CPU and time itself: (1) the noise distribution of the sampled softmax is built on the
   CPU instead of CUDA; (2) the validation search is faiss ``IndexFlatIP`` (CPU) instead of the GPU
   index; (3) the per-sequence time and adjacency matrices its batches carry, which REMI never
   reads, are not computed; (4) a timer after each optimiser step (:data:`TIMER`) measures
   ``--steps`` steps after ``--warmup`` steps and then, unless ``--no-validate``, one validation
   pass after a warm-up pass, prints the result and ends the process. A fifth change is
   configuration only: the training entry point knows its datasets by name, so an entry for
   DATASET is added (its path, item count and history length; validation every
   warm-up + steps + 1 steps, so that no validation falls inside the timed steps);
3. alternates, in fresh processes with one thread each, the reference's own training entry point
   (``src/train.py --model_type REMI`` with D, K, negatives, beta and lambda from dmirec's
   ``configs/DATASET/remi.yaml``) and dmirec's training step as ``scripts/bench_hotpath.py step``
   measures it (its ``STEP_CHILD``, the same steps and warm-up); the order flips every pair. With
   validation, each pair also times one validation pass of dmirec (``bench_hotpath.py validate``'s
   child, faiss flat, a freshly initialised REMI) and the reference's ``evaluate`` over the valid
   users (faiss flat, the model after the timed steps);
4. records seq/s (batch x steps / seconds) per pair, the medians and their ratio, with the machine,
   both commits and the settings, in ``bench_results/speed_reference.json`` (or ``--out``).

Run it on an otherwise idle machine: the pairs share its load, but a loaded machine still shifts
the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import DATA, RESULTS, ROOT, git_commit, machine
from bench_hotpath import STEP_CHILD, VALID_CHILD, child, tree_commit

OUT = RESULTS / "speed_reference.json"
REFERENCE_REPOSITORY = "github.com/Tokkiu/REMI"
MARK = "DMIREC_BENCH_REFERENCE "  # the timer's result line in the reference run's output


class PatchError(SystemExit):
    """A substitution's target text is not in the reference checkout as often as expected."""


@dataclass(frozen=True)
class Substitution:
    """Replace ``old`` by ``new`` in ``file`` (relative to the checkout), which must hold ``old``
    exactly ``count`` times."""

    change: str
    file: str
    old: str
    new: str
    count: int = 1


CHANGES = {
    "cpu-noise": "(1) the sampled softmax's noise distribution is built on the CPU instead of CUDA",
    "cpu-faiss": "(2) the validation search uses faiss IndexFlatIP (CPU) instead of GpuIndexFlatIP",
    "no-time-matrices": "(3) the per-sequence time and adjacency matrices, unused by REMI, are not computed",
    "timer": "(4) a timer after each optimiser step: --steps steps after --warmup, then one validation "
             "pass after a warm-up pass; prints the result and ends the process",
    "dataset-entry": "(configuration) an entry for the dataset in src/train.py: path, item count, history "
                     "length, validation interval beyond the timed steps",
}

# called after every optimiser step of the reference's training loop (change 4)
TIMER_CALL = ('            __import__("bench_timer").tick(iter, batch_size, lambda: (model.eval(), '
              'evaluate(model, valid_data, hidden_size, device, topN, args=args))[1])\n')

TIMER = '''"""Benchmark timer added to a scratch copy of the REMI code by dmirec's scripts/bench_reference.py."""
import json
import os
import time

import faiss
import torch

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)
WARMUP, STEPS = int(os.environ["BENCH_WARMUP"]), int(os.environ["BENCH_STEPS"])
VALIDATE = os.environ.get("BENCH_VALIDATE") == "1"
_start = [None]


def tick(step, batch_size, validate):
    """``step``: optimiser steps done so far (1-based); ``validate``: one validation pass."""
    if step == WARMUP:
        _start[0] = time.perf_counter()
    if step < WARMUP + STEPS:
        return
    seconds = time.perf_counter() - _start[0]
    result = {"steps": STEPS, "warmup": WARMUP, "batch_size": batch_size, "seconds": seconds,
              "seq_per_s": batch_size * STEPS / seconds, "torch_threads": torch.get_num_threads()}
    if VALIDATE:
        validate()  # warm-up pass
        start = time.perf_counter()
        metrics = validate()
        result["valid_seconds"] = time.perf_counter() - start
        result["valid_recall@50"] = metrics["recall"]
    print("''' + MARK + '''" + json.dumps(result), flush=True)
    os._exit(0)
'''


def dataset_entry(name: str, num_items: int, seq_len: int, test_iter: int) -> str:
    return (f"    if args.dataset == '{name}':\n"
            f"        path = './data/{name}_data/'\n"
            f"        item_count = {num_items} + 1\n"
            f"        batch_size = 128\n"
            f"        seq_len = {seq_len}\n"
            f"        test_iter = {test_iter}\n")


def substitutions(name: str, num_items: int, seq_len: int, test_iter: int) -> list[Substitution]:
    """The minimal text fragments of the reference code that change, and what replaces them."""
    train_file = "    train_file = path + args.dataset + '_train.txt'\n"
    return [
        Substitution("cpu-noise", "src/BasicModel.py", "torch.Tensor([1.0] * number).cuda()",
                     "torch.Tensor([1.0] * number)", count=2),
        Substitution("cpu-faiss", "src/evalution.py", "res = faiss.StandardGpuResources()", "res = None"),
        Substitution("cpu-faiss", "src/evalution.py", "flat_config = faiss.GpuIndexFlatConfig()",
                     "flat_config = None"),
        Substitution("cpu-faiss", "src/evalution.py", "flat_config.device = device.index", "pass"),
        Substitution("cpu-faiss", "src/evalution.py", "faiss.GpuIndexFlatIP(res, hidden_size, flat_config)",
                     "faiss.IndexFlatIP(hidden_size)"),
        Substitution("no-time-matrices", "src/utils.py", "    def compute_time_matrix(self, time_seq, item_num):\n",
                     "    def compute_time_matrix(self, time_seq, item_num):\n        return 0\n"),
        Substitution("no-time-matrices", "src/utils.py", "    def compute_adj_matrix(self, mask_seq, item_num):\n",
                     "    def compute_adj_matrix(self, mask_seq, item_num):\n        return 0\n"),
        Substitution("timer", "src/evalution.py", "            optimizer.step()\n",
                     "            optimizer.step()\n" + TIMER_CALL),
        Substitution("dataset-entry", "src/train.py", train_file,
                     dataset_entry(name, num_items, seq_len, test_iter) + train_file),
    ]


def apply_substitutions(root: Path, subs: list[Substitution], named: Path | None = None) -> None:
    """Apply ``subs`` in order to the files under ``root``; :class:`PatchError` names the first
    missing target, in the file under ``named`` (the checkout ``root`` copies) when given."""
    for sub in subs:
        path = root / sub.file
        shown = (named or root) / sub.file
        if not path.is_file():
            raise PatchError(f"{shown}: file not found (change {sub.change!r}); is --ref a checkout of "
                             f"{REFERENCE_REPOSITORY}?")
        text = path.read_text(encoding="utf-8")
        found = text.count(sub.old)
        if found != sub.count:
            raise PatchError(f"{shown}: change {sub.change!r} expects the text {sub.old.strip()!r} "
                             f"{sub.count} time(s), found {found}; is --ref a checkout of {REFERENCE_REPOSITORY}?")
        path.write_text(text.replace(sub.old, sub.new), encoding="utf-8")


def file_digests(root: Path, subs: list[Substitution]) -> dict[str, str]:
    """sha256 of each reference file the substitutions change, before they change it."""
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in sorted({s.file for s in subs})}


def export_reference_data(data_dir: Path, out_dir: Path, name: str) -> dict:
    """Write the prepared dataset at ``data_dir`` as ``out_dir/NAME_{train,valid,test}.txt``, the
    reference code's input (lines ``user,item,index,timestamp``, each user's items in time order).
    Returns the number of items and the lines written per split."""
    from dmirec.data.dataset import load_dataset, read_ids
    from dmirec.data.prepare import _Split, _write_comirec_files

    data = load_dataset(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = _Split(item_raw=data.item_ids, user_raw=read_ids(data_dir / "user_ids.txt"), splits=data.splits)
    _write_comirec_files(out_dir, name, split)
    return {"num_items": data.num_items, "lines": {s: int(seqs.offsets[-1]) for s, seqs in data.splits.items()}}


def patched_copy(ref: Path, work: Path, subs: list[Substitution]) -> Path:
    """A copy of the checkout at ``work/remi`` (its own data and saved models left out) with ``subs``
    applied and the timer module added."""
    dest = work / "remi"
    shutil.copytree(ref, dest, ignore=shutil.ignore_patterns(".git", "data", "best_model", "__pycache__"),
                    dirs_exist_ok=True)  # dest/data holds the exported dataset already
    apply_substitutions(dest, subs, named=ref)
    (dest / "src" / "bench_timer.py").write_text(TIMER, encoding="utf-8")
    return dest


def reference_settings(dataset: str) -> dict:
    """D, K, batch, history length, negatives, beta and lambda of dmirec's REMI config for ``dataset``."""
    from dmirec.training.train import make_config

    config = ROOT / "configs" / dataset / "remi.yaml"
    if not config.exists():
        sys.exit(f"{config} not found: --dataset needs a REMI config")
    cfg = make_config("remi", [config])
    if cfg.batch_size != 128:
        sys.exit(f"{config}: batch_size {cfg.batch_size}; the reference's entry point trains with 128 only")
    return {"config": str(config.relative_to(ROOT)), "batch_size": cfg.batch_size, "embedding_dim": cfg.embedding_dim,
            "num_interests": cfg.num_interests, "seq_len": cfg.seq_len, "num_negatives": cfg.num_negatives,
            "negative_sampler": cfg.negative_sampler, "hard_negative_beta": cfg.hard_negative_beta,
            "routing_reg": cfg.routing_reg, "lr": cfg.lr}


def reference_command(dataset: str, s: dict) -> list[str]:
    sample_prob = {"uniform": "0", "log_uniform": "1"}[s["negative_sampler"]]
    return [sys.executable, "src/train.py", "--model_type", "REMI", "--dataset", dataset, "--gpu", "",
            "--hidden_size", str(s["embedding_dim"]), "--interest_num", str(s["num_interests"]),
            "--sampled_n", str(s["num_negatives"]), "--sample_prob", sample_prob,
            "--rbeta", str(s["hard_negative_beta"]), "--rlambda", str(s["routing_reg"]),
            "--learning_rate", str(s["lr"]), "--random_seed", "2021"]


def run_reference(copy: Path, command: list[str], steps: int, warmup: int, validate: bool) -> dict:
    """One reference run in a fresh process (one thread, no GPU); the timer's result."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", BENCH_STEPS=str(steps),
               BENCH_WARMUP=str(warmup), BENCH_VALIDATE="1" if validate else "0")
    out = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith(MARK)]
    if out.returncode or not lines:
        raise SystemExit(f"reference run failed (exit {out.returncode}) in {copy}:\n"
                         f"{out.stdout[-1500:]}\n{out.stderr[-1500:]}")
    return json.loads(lines[-1][len(MARK):])


def run_dmirec(dataset: str, steps: int, warmup: int, validate: bool) -> dict:
    """dmirec's step measurement (bench_hotpath's STEP_CHILD) and, optionally, one validation pass."""
    src, data_dir = ROOT / "src", DATA / dataset
    config = ROOT / "configs" / dataset / "remi.yaml"
    got = child(src, STEP_CHILD, [str(data_dir), str(config), "remi", str(steps), str(warmup)])
    if validate:
        valid = child(src, VALID_CHILD, [str(data_dir), "faiss", "0"])
        got.update(valid_seconds=valid["seconds"], valid_users=valid["users"])
    return got


def measure_pairs(args, copy: Path, command: list[str]) -> list[dict]:
    pairs = []
    for p in range(args.pairs):
        order = ["reference", "dmirec"] if p % 2 == 0 else ["dmirec", "reference"]
        got = {}
        for who in order:
            if who == "reference":
                got[who] = run_reference(copy, command, args.steps, args.warmup, args.validate)
            else:
                got[who] = run_dmirec(args.dataset, args.steps, args.warmup, args.validate)
        row = {"pair": p, "order": order, "dmirec_seq_per_s": got["dmirec"]["seq_per_s"],
               "reference_seq_per_s": got["reference"]["seq_per_s"],
               "reference_torch_threads": got["reference"]["torch_threads"]}
        if args.validate:
            row.update(dmirec_valid_seconds=got["dmirec"]["valid_seconds"],
                       reference_valid_seconds=got["reference"]["valid_seconds"],
                       valid_users=got["dmirec"]["valid_users"],
                       reference_valid_recall_at_50=got["reference"]["valid_recall@50"])
        print(f"pair {p}: dmirec {row['dmirec_seq_per_s']:,.0f} seq/s, reference "
              f"{row['reference_seq_per_s']:,.0f} seq/s"
              + (f"; validation {row['dmirec_valid_seconds']:.3f} s vs {row['reference_valid_seconds']:.3f} s"
                 if args.validate else ""), flush=True)
        pairs.append(row)
    return pairs


def summary(pairs: list[dict]) -> dict:
    med = {"dmirec_seq_per_s": statistics.median(r["dmirec_seq_per_s"] for r in pairs),
           "reference_seq_per_s": statistics.median(r["reference_seq_per_s"] for r in pairs)}
    out = {"median": med, "ratio": med["dmirec_seq_per_s"] / med["reference_seq_per_s"]}
    if "dmirec_valid_seconds" in pairs[0]:
        med["dmirec_valid_seconds"] = statistics.median(r["dmirec_valid_seconds"] for r in pairs)
        med["reference_valid_seconds"] = statistics.median(r["reference_valid_seconds"] for r in pairs)
        out["valid_ratio"] = med["reference_valid_seconds"] / med["dmirec_valid_seconds"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, help=f"a checkout of {REFERENCE_REPOSITORY}")
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--no-validate", dest="validate", action="store_false", help="time the training steps only")
    p.add_argument("--keep", action="store_true", help="keep the patched copy and the exported data")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.pairs < 1 or args.steps < 1 or args.warmup < 1:
        p.error("--pairs, --steps and --warmup must be at least 1")
    ref = Path(args.ref).resolve()
    if not (ref / "src" / "train.py").is_file():
        sys.exit(f"{ref / 'src' / 'train.py'} not found: --ref must be a checkout of {REFERENCE_REPOSITORY}")
    data_dir = DATA / args.dataset
    if not (data_dir / "meta.json").is_file():
        sys.exit(f"{data_dir}: no prepared dataset; `python scripts/bench.py` prepares bench_data/{args.dataset}")
    start = time.perf_counter()
    settings = reference_settings(args.dataset)
    work = Path(tempfile.mkdtemp(prefix="dmirec-reference-"))
    try:
        exported = export_reference_data(data_dir, work / "remi" / "data" / f"{args.dataset}_data", args.dataset)
        subs = substitutions(args.dataset, exported["num_items"], settings["seq_len"], args.warmup + args.steps + 1)
        digests = file_digests(ref, subs)
        copy = patched_copy(ref, work, subs)
        command = reference_command(args.dataset, settings)
        pairs = measure_pairs(args, copy, command)
    finally:
        if args.keep:
            print(f"patched copy and data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rec = {"dataset": args.dataset, "data_dir": str(data_dir.relative_to(ROOT)), "settings": settings,
           "steps": args.steps, "warmup": args.warmup, "threads": 1, "seed": {"dmirec": 0, "reference": 2021},
           "pairs": pairs, **summary(pairs),
           "reference": {"repository": REFERENCE_REPOSITORY, "commit": tree_commit(ref), "files_sha256": digests,
                         "command": [c if c else "''" for c in command[1:]], "seed": 2021,
                         "changes": list(CHANGES.values()), "exported_lines": exported["lines"]},
           "dmirec": {"step": "scripts/bench_hotpath.py STEP_CHILD (seed 0)",
                      "validate": "scripts/bench_hotpath.py VALID_CHILD, faiss, all valid users"},
           "commit": git_commit(), "machine": machine(), "args": vars(args),
           "wall_seconds": time.perf_counter() - start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=2) + "\n")
    med = rec["median"]
    print(f"median: dmirec {med['dmirec_seq_per_s']:,.0f} seq/s, reference {med['reference_seq_per_s']:,.0f} seq/s, "
          f"ratio {rec['ratio']:.2f}x; recorded in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
