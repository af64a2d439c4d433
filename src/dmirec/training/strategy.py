"""How a training run is spread over processes, chosen once when it is set up (:func:`choose`).

The loop (:func:`dmirec.training.train._train`) is the same for every run; what differs between
one process, data-parallel ranks and ranks sharing a row-wise sharded item table lives here:

==================  ================  ==========================  ===============================
                    :class:`Single`   :class:`DataParallel`       :class:`ShardedTable`
==================  ================  ==========================  ===============================
item table          whole, in model   whole, in model (replica)   this rank's rows (TorchRec)
step                the loss          DDP around the loss         DDP + one sharded lookup
optimiser           Adam / sparse     Adam / sparse               + the table's own optimiser
checkpoints         ``NAME.pt``       ``NAME.pt`` by rank 0       + one table file per rank
who searches        the process       rank 0                      every rank (its own rows)
==================  ================  ==========================  ===============================

Everything else a rank needs (its share of each batch, its negatives' seed, broadcasting rank 0's
decisions) comes from the process group's :class:`~dmirec.training.distributed.ddp.Context`,
whose collectives are no-ops in one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..config import Config, ConfigError
from ..models import set_routing_reg
from ..models.base import fill_blocked_table
from ..runs.rundir import RunError
from . import optim
from .distributed import ddp, sharded, sharded_checkpoint, sharded_optim

LossFn = Callable[..., torch.Tensor]  # (model, history, mask, target, neg_ids, users) -> scalar loss


class Single:
    """One process: the model trains as it is, and holds (and checkpoints) the whole item table."""

    sharded = False

    def __init__(self, ctx: ddp.Context):
        self.ctx = ctx

    def check(self, cfg: Config, device: torch.device) -> None:
        """One-line errors for a run this strategy cannot train."""

    @property
    def searches(self) -> bool:
        """Whether this rank runs the validation and test searches."""
        return self.ctx.main

    def place_table(self, model: nn.Module, cfg: Config, blocked: bool) -> None:
        """Give a table built on the meta device (``blocked``) its blocked initial rows."""
        if blocked:
            fill_blocked_table(model, cfg.seed)

    def make_optimizer(self, model: nn.Module, cfg: Config):
        return optim.make_optimizer(model, cfg)

    def wrap(self, model: nn.Module, cfg: Config, loss_fn: LossFn, device: torch.device) -> nn.Module | None:
        """What ``train_step`` calls for the loss (None: the model itself, in one process)."""
        return None

    def save_table(self, model: nn.Module, ckpt_dir: Path, name: str, step: int) -> dict[str, Any] | None:
        """Write this rank's table file for ``NAME.pt`` (a collective); returns its manifest, or None
        when the table is in the model's state dict."""
        return None

    def remove_stale(self, ckpt_dir: Path, name: str, manifest: dict[str, Any] | None) -> None:
        """After ``NAME.pt`` is written: remove table files it no longer lists."""

    def load_table(self, model: nn.Module, path: Path, ckpt: dict[str, Any], moments: bool = False) -> None:
        """This rank's rows (and with ``moments`` its optimiser's per-row state) from the checkpoint
        ``path`` (``ckpt``, its model state just loaded); nothing to do when the table was in it."""


class DataParallel(Single):
    """Several processes (torchrun): each takes its share of every batch under DDP, which averages
    the gradients; rank 0 validates, checkpoints and logs (:mod:`dmirec.training.distributed.ddp`)."""

    def check(self, cfg: Config, device: torch.device) -> None:
        if cfg.batch_size % self.ctx.world:
            raise ConfigError(f"config key 'batch_size': {cfg.batch_size} does not split evenly over "
                              f"{self.ctx.world} ranks")

    def wrap(self, model: nn.Module, cfg: Config, loss_fn: LossFn, device: torch.device) -> nn.Module:
        # REMI's regulariser is a sum over this rank's users and DDP averages gradients over ranks
        set_routing_reg(model, cfg.routing_reg * self.ctx.world)
        return ddp.wrap(model, loss_fn, device, find_unused=cfg.model in ("dmi", "coin"))


class ShardedTable(DataParallel):
    """Data parallel, with the item table sharded row-wise over the ranks by TorchRec
    (:mod:`dmirec.training.distributed.sharded`): each rank holds, updates, saves and searches
    only its own rows."""

    sharded = True

    def check(self, cfg: Config, device: torch.device) -> None:
        if self.ctx.active:
            super().check(cfg, device)
        sharded.check(cfg, self.ctx.world, device)

    @property
    def searches(self) -> bool:
        return True

    def place_table(self, model: nn.Module, cfg: Config, blocked: bool) -> None:
        """Each rank draws and keeps its rows of the table."""
        sharded.install(model, cfg.seed, cfg.table_lr if cfg.embedding_optimizer == "rowwise_adagrad" else None)

    def make_optimizer(self, model: nn.Module, cfg: Config):
        return sharded_optim.make_optimizer(model, cfg)

    def wrap(self, model: nn.Module, cfg: Config, loss_fn: LossFn, device: torch.device) -> nn.Module:
        set_routing_reg(model, cfg.routing_reg * self.ctx.world)  # as DataParallel.wrap
        return sharded.wrap(model, loss_fn, device)

    def save_table(self, model: nn.Module, ckpt_dir: Path, name: str, step: int) -> dict[str, Any]:
        return sharded_checkpoint.save_table(model.item_emb, ckpt_dir, name, step, moments=name == "last")

    def remove_stale(self, ckpt_dir: Path, name: str, manifest: dict[str, Any] | None) -> None:
        sharded_checkpoint.remove_stale(ckpt_dir, name, manifest)

    def load_table(self, model: nn.Module, path: Path, ckpt: dict[str, Any], moments: bool = False) -> None:
        if not ckpt.get("table_shards"):
            raise RunError(f"{path}: has no item-table files (written by a version that gathered the sharded "
                           f"table; resume it with that version)")
        sharded_checkpoint.load_table(model.item_emb, path.parent, ckpt["table_shards"], moments=moments)


Strategy = Single  # any of the three: the other two extend the one-process strategy


def choose(cfg: Config, ctx: ddp.Context) -> Strategy:
    """The strategy of a run of ``cfg`` in the process group ``ctx`` (a sharded table asked for in one
    process is refused by its :meth:`~ShardedTable.check`)."""
    if cfg.sharded_embeddings:
        return ShardedTable(ctx)
    return DataParallel(ctx) if ctx.active else Single(ctx)
