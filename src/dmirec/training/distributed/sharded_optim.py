"""The optimisers of a sharded item table (:mod:`dmirec.training.distributed.sharded`): Adam over
this rank's block, dense or row-sparse (:class:`ShardedAdam`), or TorchRec's fused row-wise
Adagrad (:class:`FusedRowwiseAdagrad`); :func:`make_optimizer` pairs one with the replicated
parameters' optimiser. Their per-row state is saved with the rows
(:mod:`dmirec.training.distributed.sharded_checkpoint`)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ...config import Config, ConfigError
from .. import optim
from .sharded import ShardedItemTable, TABLE


class ShardedAdam:
    """Adam over this rank's block of the table; its moments are saved with the block's rows.

    ``sparse``: row-sparse updates, as :class:`torch.optim.SparseAdam` makes them in one process
    (:mod:`dmirec.training.optim`): only the rows some rank looked up this step (all-gathered ids, O(batch))
    are updated, from their rows of the block's gradient. Otherwise dense (fused) Adam over the
    whole block, O(N / P) per step."""

    def __init__(self, table: ShardedItemTable, lr: float, weight_decay: float, sparse: bool = False):
        self.table = table
        self.sparse = sparse
        # TorchRec's block takes only dense gradients: SparseAdam steps a plain parameter on the
        # same storage (no copy), handed the touched rows of the block's gradient
        self.param = nn.Parameter(table.block.detach()) if sparse else table.block
        self.opt = torch.optim.SparseAdam([self.param], lr=lr) if sparse else \
            torch.optim.Adam([self.param], lr=lr, weight_decay=weight_decay, fused=True)
        table.optimizer = self

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)
        if self.sparse:
            self.table.block.grad = None

    def step(self) -> None:
        grad = self.table.block.grad
        if self.sparse and grad is not None:  # a collective: every rank steps together
            rows = self.table.touched_rows()  # (R,) sorted local rows
            self.param.grad = torch.sparse_coo_tensor(rows[None], grad[rows], grad.shape, is_coalesced=True,
                                                      check_invariants=False)
        self.opt.step()

    def state_rows(self) -> dict[str, Any]:
        """This rank's ``exp_avg`` / ``exp_avg_sq`` rows and Adam's step (empty before the first step)."""
        state = self.opt.state.get(self.param, {})
        if not state:
            return {}
        return {"adam_step": float(state["step"]), "exp_avg": state["exp_avg"].detach(),
                "exp_avg_sq": state["exp_avg_sq"].detach()}

    def load_rows(self, saved: dict[str, Any], read: Callable[[str], torch.Tensor]) -> None:
        """Adam's state from a table file's scalars (``saved``) and ``read(field)``, this rank's rows."""
        step = saved.get("adam_step")
        if not step:
            return
        sd = self.opt.state_dict()
        sd["state"] = {0: {"step": int(step) if self.sparse else torch.tensor(float(step)),
                           "exp_avg": read("exp_avg"), "exp_avg_sq": read("exp_avg_sq")}}
        self.opt.load_state_dict(sd)

    def state_dict(self) -> dict[str, Any]:
        """A marker only: the moments are in the table files (:func:`~dmirec.training.distributed.sharded_checkpoint.save_table`)."""
        return {"sharded_table_adam": True}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not state.get("sharded_table_adam"):
            raise ConfigError("the checkpoint's optimiser state is not a sharded table's (was the run "
                              "started without sharded_embeddings?)")


class FusedRowwiseAdagrad:
    """``embedding_optimizer=rowwise_adagrad``: TorchRec's fused kernel updates the rows a step
    touched inside the backward pass (row-wise Adagrad, one accumulator per row), so there is
    nothing to step here; the accumulators are saved with the rows."""

    def __init__(self, table: ShardedItemTable):
        self.table = table
        table.optimizer = self

    def _momentum(self) -> torch.Tensor:
        state = self.table.ebc.fused_optimizer.state_dict()["state"][f"embedding_bags.{TABLE}.weight"]
        return state[f"{TABLE}.momentum1"].local_shards()[0].tensor  # (rows here,), the live accumulators

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing: the fused kernel keeps no gradient."""

    def step(self) -> None:
        """Nothing: the rows were updated in the backward pass."""

    def state_rows(self) -> dict[str, Any]:
        return {"adagrad_momentum": self._momentum().detach()}

    def load_rows(self, saved: dict[str, Any], read: Callable[[str], torch.Tensor]) -> None:
        with torch.no_grad():
            self._momentum().copy_(read("adagrad_momentum"))

    def state_dict(self) -> dict[str, Any]:
        return {"sharded_table_fused": True}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not state.get("sharded_table_fused"):
            raise ConfigError("the checkpoint's optimiser state is not a fused sharded table's")


def make_optimizer(model: nn.Module, cfg: Config):
    """Fused Adam over the replicated parameters, and over this rank's rows :class:`ShardedAdam`
    (dense or row-sparse) or, with ``rowwise_adagrad``, the fused kernel's own update."""
    dense = optim.make_optimizer(model, cfg)  # the table is not among model.parameters()
    if cfg.embedding_optimizer == "rowwise_adagrad":
        return optim.Optimizers([dense, FusedRowwiseAdagrad(model.item_emb)])
    table = ShardedAdam(model.item_emb, cfg.lr, cfg.weight_decay, optim.row_sparse(cfg, model.item_emb.num_rows - 1))
    return optim.Optimizers([dense, table])
