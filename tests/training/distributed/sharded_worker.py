"""Worker of tests/training/distributed/test_sharded.py, started by torchrun with 2 gloo ranks (not a test module itself).

    python -m torch.distributed.run --nproc_per_node=2 tests/training/distributed/sharded_worker.py DATA OUT OVERRIDES_JSON

In one process group: OUT/grads.pt (one step's gradients through the sharded table, gathered on
rank 0, with the batch and negatives that made them), OUT/full (sharded, per-rank negatives, to
max_steps), OUT/cut (the same run interrupted after step ``cut_at``), OUT/ddp (the same run
unsharded, plain DDP, from the same blocked initial table), OUT/sparse (sharded with row-sparse
updates and negatives shared by the ranks), OUT/fused (sharded, TorchRec's fused row-wise Adagrad),
OUT/sparse_cut and OUT/fused_cut (those runs interrupted like OUT/cut) and OUT/search.pt (the sharded search of OUT/full's best
model over the test users, with and without history exclusion).
"""

import gc
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

from dmirec.data.dataset import load_dataset
from dmirec.data.sampler import TrainSampler, eval_split
from dmirec.models import build_model, set_routing_reg
from dmirec.models.base import item_table_on_meta
from dmirec.objectives.losses import NegativeSampler
from dmirec.retrieval.distributed import rank_users
from dmirec.runs import rundir
from dmirec.training.distributed import sharded, sharded_checkpoint
from dmirec.training.distributed.ddp import Context
from dmirec.training.train import loss_with_negatives, make_config, train


class Interrupt(Exception):
    pass


def one_step_gradients(cfg, data_dir: str, out: str) -> None:
    """The gradients of one 2-rank step through the sharded table (and DDP for the rest)."""
    rank, world = tdist.get_rank(), tdist.get_world_size()
    data = load_dataset(data_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.num_items)
    table = sharded.install(model, cfg.seed)  # a whole table built here: each rank takes its rows of it
    batch = TrainSampler(data.splits["train"], cfg.batch_size, cfg.seq_len, cfg.min_cut, seed=cfg.seed).sample()
    neg = NegativeSampler(data.num_items).sample(cfg.num_negatives, torch.Generator().manual_seed(cfg.seed + 1))
    share = Context(rank=rank, world=world).share(cfg.batch_size)
    set_routing_reg(model, cfg.routing_reg * world)  # as train() does under DDP: a per-rank sum, averaged
    ddp = sharded.wrap(model, lambda m, h, mk, t, n, u: loss_with_negatives(m, cfg, h, mk, t, n, None, u),
                       torch.device("cpu"))
    h, m, t = (torch.from_numpy(np.ascontiguousarray(x[share])) for x in (batch.history, batch.mask, batch.target))
    ddp(h, m, t, neg, None).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    grads["item_emb.weight"] = table.gather_rows(table.block.grad)
    if rank == 0:
        torch.save({"grads": grads, "history": batch.history, "mask": batch.mask, "target": batch.target,
                    "negatives": neg}, f"{out}/grads.pt")


def sharded_search(cfg, data_dir: str, run: str, out: str) -> None:
    """The best model of ``run`` loaded rank by rank (no process reads the whole table), searched
    with every rank's rows: the top 50 of every test user, with and without history exclusion."""
    data = load_dataset(data_dir)
    with item_table_on_meta():
        model = build_model(cfg, data.num_items)
    assert model.item_emb.weight.is_meta
    table = sharded.install(model, cfg.seed)
    best = rundir.load_checkpoint(f"{run}/checkpoints/best.pt", assemble=False)
    assert "item_emb.weight" not in best["model"]
    model.load_state_dict(best["model"])
    sharded_checkpoint.load_table(table, Path(run) / "checkpoints", best["table_shards"])
    eval_set = eval_split(data.splits["test"], cfg.seq_len)
    found = {(backend, ex): rank_users(model, eval_set, 50, backend, exclude_history=ex)
             for backend in ("torch", "faiss") for ex in (False, True)}
    if tdist.get_rank() == 0:
        torch.save({key: (r.ids, r.scores, r.interest) for key, r in found.items()}, f"{out}/search.pt")


def main() -> None:
    data, out, over = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cut_at = over.pop("cut_at")
    tdist.init_process_group("gloo")
    torch.set_num_threads(1)
    cfg = make_config("remi", overrides={**over, "sharded_embeddings": True})
    one_step_gradients(cfg, data, out)
    train(cfg, data, f"{out}/full")

    def interrupt(step):
        if step == cut_at:
            raise Interrupt

    try:
        train(cfg, data, f"{out}/cut", callback=interrupt)
    except Interrupt:
        pass
    train(cfg.replace(sharded_embeddings=False, table_init="blocked"), data, f"{out}/ddp")
    sparse = cfg.replace(embedding_optimizer="sparse", dist_negatives="global")
    fused = cfg.replace(embedding_optimizer="rowwise_adagrad", table_lr=0.1)
    for name, run_cfg in (("sparse", sparse), ("fused", fused)):
        train(run_cfg, data, f"{out}/{name}")
        try:
            train(run_cfg, data, f"{out}/{name}_cut", callback=interrupt)
        except Interrupt:
            pass
    sharded_search(cfg, data, f"{out}/full", out)
    gc.collect()  # the runs' DDP wrappers (reference cycles) freed while the group still exists
    tdist.barrier()  # no gloo work in flight when the group is torn down
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()
