"""Data-parallel training on ``torch.distributed``: the small pieces :mod:`dmirec.training.train` uses.

``torchrun --nproc_per_node=P -m dmirec train ...`` starts P processes with ``RANK`` /
``WORLD_SIZE`` / ``LOCAL_RANK`` in the environment; :func:`setup` joins them into a process
group (gloo on CPU, nccl on CUDA, one GPU per local rank). Without those variables everything
here is a no-op for a single process, and training runs exactly as it always did.

How a step is split (docs/scale/many-machines.md):

* every rank draws the same global batch of ``batch_size`` users from the one seeded sampler
  (O(batch) index draws) and keeps its contiguous share of ``batch_size / P`` rows, so the data
  order does not depend on P and ``--resume`` continues the same batch sequence at any P;
* each rank draws ``num_negatives`` negatives shared by its own rows (``dist_negatives=rank``;
  rank 0 keeps the single-process stream) or all ranks draw the same ones (``global``);
* the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` around a module
  whose forward is the whole loss (:class:`LossModule`), which averages gradients over ranks:
  the gradient of the mean loss over the global batch. REMI's routing regulariser is a sum over
  users, so each rank scales it by P to keep the global sum;
* rank 0 validates, checkpoints and logs; the others wait and receive its decisions.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the number of ranks, whether it started the group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, batch_size: int) -> slice:
        """This rank's contiguous rows of a global batch."""
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable value)."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def mean(self, value: float) -> float:
        """The mean of a float over ranks (the logged loss is the global batch's)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        tdist.all_reduce(t)
        return float(t[0]) / self.world

    def mean_each(self, values: torch.Tensor) -> list[float]:
        """Each entry of a float64 vector averaged over ranks, as :meth:`mean` does one float (one collective)."""
        if not self.active:
            return values.tolist()
        values = values.clone()
        tdist.all_reduce(values)
        return [v / self.world for v in values.tolist()]

    def close(self) -> None:
        if self.owns_group and tdist.is_initialized():
            # every rank's pending gloo work done first, and the DDP wrapper (its reducer holds the
            # group; DDP modules sit in reference cycles, so only the collector frees them) gone
            # before the group: either left for interpreter exit can abort the process there
            # ("terminate called without an active exception")
            gc.collect()
            tdist.barrier()
            tdist.destroy_process_group()


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def env_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def setup(device_type: str) -> Context:
    """Join the torchrun process group when started by torchrun (WORLD_SIZE > 1)."""
    world = env_world()
    if world <= 1:
        return Context()
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    owns = False
    if not tdist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        tdist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        owns = True
    return Context(rank=tdist.get_rank(), world=tdist.get_world_size(), local_rank=local_rank, owns_group=owns)


class LossModule(nn.Module):
    """The training loss as a module's forward, so DDP sees (and synchronises) the whole step."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                neg_ids: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss_fn(self.model, history, mask, target, neg_ids, users)


def wrap(model: nn.Module, loss_fn: Callable[..., torch.Tensor], device: torch.device,
         find_unused: bool) -> nn.Module:
    """DDP around :class:`LossModule` (call it with the batch share and its negatives)."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(LossModule(model, loss_fn), device_ids=ids, find_unused_parameters=find_unused)
