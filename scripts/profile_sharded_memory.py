#!/usr/bin/env python
"""Where a sharded rank's memory and step time go: RSS after each phase of a sharded run, and a
torch-profiler breakdown of its training step.

    python -m torch.distributed.run --nproc_per_node=2 scripts/profile_sharded_memory.py \
        bench_data/synth-1000000-u20000-s0 [--steps 5] [--valid_users 1000]

Every rank builds the model with its table on the meta device, installs its rows, takes
``--steps`` training steps through the sharded table, validates with the sharded search, and
writes its table file; it prints its current RSS (``/proc/self/status`` VmRSS) and the peak so
far (VmHWM) after each phase, with the size of one rank's block for scale; rank 0 writes every
rank's phases to ``bench_results/profile_sharded_memory.json`` (with commit and machine). A
measurement aid for ``scripts/bench_scale.py sharded`` (which records only each process's final
peak); it needs the `dist` extra. Then ``--profile_steps`` more steps run under the torch profiler
and rank 0 records the ms per step and the operators with the largest self CPU time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.distributed as tdist


def rss() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def rows_mib(rows: int, dim: int) -> float:
    return rows * dim * 4 / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--valid_users", type=int, default=1000)
    p.add_argument("--profile_steps", type=int, default=10)
    p.add_argument("--out", default="/tmp/profile_sharded_memory", help="where the table files are written (then removed)")
    args = p.parse_args()

    from dmirec.training.distributed import sharded, sharded_checkpoint, sharded_optim
    from dmirec.data.dataset import load_dataset
    from dmirec.data.sampler import TrainSampler, valid_split
    from dmirec.training.distributed.ddp import Context
    from dmirec.evaluation.evaluate import evaluate_model
    from dmirec.objectives.losses import NegativeSampler
    from dmirec.models import build_model, set_routing_reg
    from dmirec.models.base import item_table_on_meta
    from dmirec.training.train import loss_with_negatives, make_config, train_step

    tdist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = tdist.get_rank(), tdist.get_world_size()

    phases: list[dict] = []

    def report(phase: str) -> None:
        now, peak = rss()
        rows = ctx_rows[0]
        phases.append({"phase": phase, "rss_mib": now, "peak_mib": peak, "block_rows": rows})
        print(f"rank {rank} {phase:<28} RSS {now:7.0f} MiB   peak {peak:7.0f} MiB   (one block: {rows} rows, "
              f"{rows_mib(rows, cfg.embedding_dim):.0f} MiB)", flush=True)

    ctx_rows = [0]
    cfg = make_config("remi", overrides={"sharded_embeddings": True, "progress": False, "threads": 1,
                                         "valid_users": args.valid_users, "device": "cpu", "seed": 0})
    data = load_dataset(args.data, mmap=True)
    report("data loaded")
    with item_table_on_meta():
        model = build_model(cfg, data.num_items, data.item_popularity("train"))
    table = sharded.install(model, cfg.seed)
    ctx_rows[0] = table.rows_here
    report("table installed")
    optimizer = sharded_optim.make_optimizer(model, cfg)
    set_routing_reg(model, cfg.routing_reg * world)
    ddp = sharded.wrap(model, lambda m, h, mk, t, n, u: loss_with_negatives(m, cfg, h, mk, t, n, None, u),
                       torch.device("cpu"))
    sampler = TrainSampler(data.splits["train"], cfg.batch_size, cfg.seq_len, cfg.min_cut, seed=cfg.seed)
    negatives = NegativeSampler(data.num_items)
    gen = torch.Generator().manual_seed(cfg.seed + 1 + 7919 * rank)
    share = Context(rank=rank, world=world).share(cfg.batch_size)
    for _ in range(args.steps):
        train_step(model, optimizer, cfg, sampler.sample(), negatives, gen, "cpu", share=share, ddp=ddp)
    report(f"{args.steps} steps")
    from torch.profiler import profile

    with profile() as prof:
        tick = time.perf_counter()
        for _ in range(args.profile_steps):
            train_step(model, optimizer, cfg, sampler.sample(), negatives, gen, "cpu", share=share, ddp=ddp)
        step_ms = (time.perf_counter() - tick) * 1000 / max(args.profile_steps, 1)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    top_ops = [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count} for e in ops[:8]]
    optimizer.zero_grad(set_to_none=True)
    report("gradients freed")
    evaluate_model(model, data, "valid", cfg.seq_len, (20, 50), cfg.retrieval_backend, False, cfg.eval_batch_size,
                   eval_set=valid_split(data.splits["valid"], cfg))
    report("validated (sharded search)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sharded_checkpoint.save_table(table, out, "last", args.steps, moments=True)
    report("table file written")
    (out / f"last.table.s{args.steps}.r{rank}of{world}.pt").unlink()
    every = [None] * world
    tdist.all_gather_object(every, phases)
    if rank == 0:
        import json
        import sys

        root = Path(__file__).resolve().parents[1]
        sys.path.insert(0, str(root / "scripts"))
        from bench import git_commit, machine

        update = "row-sparse" if getattr(optimizer.optimizers[-1], "sparse", False) else "dense"
        record = {"argv": sys.argv[1:], "ranks": every, "step_ms_rank0": step_ms, "top_ops_rank0": top_ops,
                  "table_update": update, "block_mib": rows_mib(ctx_rows[0], cfg.embedding_dim),
                  "commit": git_commit(), "machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (root / "bench_results" / "profile_sharded_memory.json").write_text(json.dumps(record, indent=2) + "\n")
    tdist.barrier()
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()
