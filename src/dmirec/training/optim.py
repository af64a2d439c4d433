"""Optimisers of a training run: dense Adam, or row-sparse updates of the item table.

A dense step updates the whole ``(N + 1, D)`` item table: its gradient is a dense tensor and
Adam reads and writes the table and both moments in full, so step cost grows with the catalogue.
The sparse path keeps the step independent of N: the item table becomes an
``nn.Embedding(sparse=True)``, every lookup goes through the embedding module (the loss gathers
target and negative rows with it, see :func:`item_lookup`), so its gradient is a sparse tensor
holding only the rows the batch touched, and :class:`torch.optim.SparseAdam` updates only those
rows (and their moments); every other parameter stays on fused Adam.

SparseAdam is "lazy" Adam: a row's moments decay only on the steps that touch it, so sparse and
dense Adam are different optimisers (the same for plain SGD, which tests check). ``auto`` (the
default) picks sparse from ``sparse_min_items`` items up, where it is measured to be faster
(scripts/bench_scale.py); below that, and whenever ``weight_decay`` is set, runs keep dense Adam,
so results on the small benchmark catalogues do not change.

The dense path of one process also looks rows up through the embedding module (:func:`set_sparse`
with ``lookups="sparse"``): the lookups' gradients are small sparse tensors, added in place into
one dense gradient tensor the table keeps from step to step (:func:`prepare_table_grad` before
``backward``, :func:`finish_table_grad` after it), where indexing the table would build a fresh
zero-filled ``(N + 1, D)`` gradient per lookup (three per step) and sum them. Same dense Adam,
same gradient up to float summation order; about a quarter of a small-catalogue step saved
(scripts/bench_hotpath.py profile). Data-parallel runs keep dense lookups, whose gradients DDP
all-reduces as they are.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..config import Config, ConfigError


def use_sparse(cfg: Config, num_items: int) -> bool:
    """Whether a run of ``cfg`` on ``num_items`` items updates its (unsharded) item table row-sparsely."""
    return not cfg.sharded_embeddings and row_sparse(cfg, num_items)


def row_sparse(cfg: Config, num_items: int) -> bool:
    """The rule: row-sparse item-table updates for ``embedding_optimizer=sparse``, or with ``auto``
    from ``sparse_min_items`` items up when there is no weight decay (a sharded table's rows too)."""
    if cfg.embedding_optimizer == "sparse":
        return True
    if cfg.embedding_optimizer == "dense":
        return False
    return num_items >= cfg.sparse_min_items and cfg.weight_decay == 0.0


def set_sparse(model: torch.nn.Module, sparse: bool, lookups: str = "dense") -> None:
    """Switch the model's item table to sparse gradients (models without a table are left alone).

    ``sparse``: row-sparse updates (SparseAdam). ``lookups="sparse"`` with ``sparse=False``: dense
    Adam whose table gradient is accumulated in place from sparse lookups (one process only)."""
    table = getattr(model, "item_emb", None)
    if isinstance(table, torch.nn.Embedding):
        table.sparse = sparse or lookups == "sparse"
        table.dense_grad = not sparse and lookups == "sparse"
    elif sparse:
        raise ConfigError(f"embedding_optimizer=sparse: model {type(model).__name__} has no item table")


def setup_table(model: torch.nn.Module, cfg: Config, num_items: int, distributed: bool = False) -> None:
    """The item table's update path for a training run of ``cfg`` (what ``train`` and the speed
    benchmarks use): row-sparse per :func:`use_sparse`, else dense Adam with sparse lookups in one
    process and dense lookups under DDP, which all-reduces their gradients as they are, and under
    ``compile`` (the compiler traces dense gradients, not sparse ones)."""
    sparse = getattr(model, "trainable", True) and use_sparse(cfg, num_items)
    set_sparse(model, sparse, lookups="dense" if distributed or cfg.compile else "sparse")


def is_sparse(model: torch.nn.Module) -> bool:
    """Whether the item table is updated row-sparsely (SparseAdam)."""
    table = getattr(model, "item_emb", None)
    return isinstance(table, torch.nn.Embedding) and table.sparse and not getattr(table, "dense_grad", False)


def prepare_table_grad(model: torch.nn.Module) -> None:
    """Before ``backward``, for a table with sparse lookups and dense Adam: hand the table its kept
    dense gradient tensor, zeroed, for the lookups' sparse gradients to be added into in place."""
    table = getattr(model, "item_emb", None)
    if not getattr(table, "dense_grad", False) or not table.weight.requires_grad:
        return
    weight = table.weight
    kept = getattr(table, "kept_grad", None)
    if kept is None or kept.shape != weight.shape or kept.device != weight.device or kept.dtype != weight.dtype:
        kept = table.kept_grad = torch.zeros_like(weight)
    else:
        kept.zero_()
    weight.grad = kept
    table.kept_version = kept._version  # in-place adds bump it: finish_table_grad sees whether any came


def finish_table_grad(model: torch.nn.Module) -> None:
    """After ``backward``: a table that received no gradient this step gets ``grad = None`` back, so
    Adam skips it exactly as with dense lookups (a frozen backbone's table does not move, weight
    decay included)."""
    table = getattr(model, "item_emb", None)
    kept = getattr(table, "kept_grad", None) if getattr(table, "dense_grad", False) else None
    if kept is not None and table.weight.grad is kept and kept._version == table.kept_version:
        table.weight.grad = None


def item_lookup(model: torch.nn.Module) -> torch.Tensor | Callable[[torch.Tensor], torch.Tensor]:
    """What the loss gathers item rows from: the table tensor (dense) or a row lookup (sparse).

    The dense path indexes ``item_embeddings()`` exactly as before; the sparse path must go
    through the embedding module, or the table's gradient would be dense again.
    """
    table = getattr(model, "item_emb", None)
    if getattr(table, "sparse", False) or getattr(table, "sharded", False):
        return model.item_rows
    return model.item_embeddings()  # (N + 1, D)


class Optimizers:
    """Several optimisers stepped as one (dense Adam for most parameters, SparseAdam for the table)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parts = state.get("optimizers") if isinstance(state, dict) else None
        if parts is None or len(parts) != len(self.optimizers):
            raise ConfigError("the checkpoint's optimiser state does not match this run's optimisers "
                              "(dense vs sparse item-table updates)")
        for opt, part in zip(self.optimizers, parts):
            opt.load_state_dict(part)


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer | Optimizers:
    """Adam over the model's parameter groups; the item table on SparseAdam when it is sparse."""
    groups = model.param_groups(cfg) if hasattr(model, "param_groups") else [{"params": list(model.parameters())}]
    groups = [g for g in groups if any(p.requires_grad for p in g["params"])]
    if not is_sparse(model):
        # The fused kernel is the same Adam update in one pass over each tensor; about 1.5-2x faster steps
        # on CPU for these small models, where the optimiser touches the whole item table every step.
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.weight_decay:
        raise ConfigError("config key 'weight_decay' must be 0 with sparse item-table updates")
    table = model.item_emb.weight
    table_lr = next((g.get("lr", cfg.lr) for g in groups if any(p is table for p in g["params"])), cfg.lr)
    rest = [{**g, "params": [p for p in g["params"] if p is not table]} for g in groups]
    rest = [g for g in rest if g["params"]]
    opts: list[torch.optim.Optimizer] = []
    if rest:
        opts.append(torch.optim.Adam(rest, lr=cfg.lr, fused=True))
    opts.append(torch.optim.SparseAdam([table], lr=table_lr))
    return Optimizers(opts)
