"""A row-wise sharded item table on TorchRec, for ``torchrun ... train --sharded_embeddings=true``.

What is sharded. The item table ``(N + 1, D)`` of the model is replaced by
:class:`ShardedItemTable`: a TorchRec ``EmbeddingBagCollection`` with one table, sharded
ROW-WISE over the P ranks (``torchrec.distributed.shard`` with a ``row_wise`` plan, gloo on
CPU): rank r holds a contiguous block of about ``(N + 1) / P`` rows and nothing else of the
table. Everything else in the model is small and stays replicated under
``DistributedDataParallel`` (:mod:`dmirec.dist`), which averages its gradients as before. The
TorchRec module is kept outside the model's module tree, so DDP, ``model.parameters()`` and
``model.state_dict()`` never see TorchRec's own parameter names.

Lookups. One training step makes ONE sharded lookup: before the loss, the step's history,
target and negative ids are deduplicated and looked up together (:meth:`ShardedItemTable.prefetch`,
a KeyedJaggedTensor with one id per bag: TorchRec routes each id to the rank that owns its row
and sends the row back, and in the backward pass sends each row's gradient to its owner). The
model then reads rows through ``item_emb(ids)`` as always, served from that prefetched block; the
padding id 0 is a constant zero row that is never looked up, like ``padding_idx=0``. A row's
gradient arriving at its owner is the sum over ranks of each rank's mean-loss gradient divided
by P (TorchRec's ``gradient_division``, on by default and set here), so it is the gradient of the
mean loss over the global batch, exactly what DDP's average gives the replicated parameters
(tested against one process).

The optimiser is plain: TorchRec's ``dense`` compute kernel gives this rank's block an ordinary
dense gradient, and a ``torch.optim.Adam`` over the block (:class:`ShardedAdam`) updates it with
the run's ``lr`` and ``weight_decay``. Adam is elementwise, so P ranks each updating their
block take exactly the step one process takes on the whole table (same global batch and
negatives: tested to float precision). TorchRec's fused (in-backward) optimisers run on CPU only
as SGD / (row-wise) Adagrad, and its sequence (``EmbeddingCollection``) lookup with the dense
kernel returns pooled rows on CPU, hence the pooled collection with one id per bag.

Memory. Each rank holds its block, its gradient and Adam's two moments: ``4 (N + 1) D / P``
floats instead of ``4 (N + 1) D``. The step costs O(N / P) per rank (dense Adam over the
block; ``embedding_optimizer=sparse`` is not available here). At three points the whole
table is on one process: the model is built whole on every rank and its initial table copied
into the blocks (so a sharded run starts from exactly the unsharded run's parameters);
validation gathers the table on rank 0, which scores the validation users alone; and each
checkpoint gathers the table (and the Adam moments) on rank 0, so ``best.pt`` / ``last.pt``
have the same format as an unsharded run's (``item_emb.weight``): ``evaluate``, ``export`` and
``serve`` work unchanged, and ``--resume`` slices every rank's rows back out.

TorchRec is an optional extra (``INSTALL``); nothing here imports it until a sharded run starts.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

from .config import SHARDED_MODELS as MODELS  # noqa: F401 (re-exported)
from .config import Config, ConfigError

INSTALL = ("pip install --no-deps torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0 tensordict==0.15.3 torchmetrics==1.0.3 "
           "lightning-utilities==0.15.3 pyre-extensions==0.0.32 typing-inspect==0.9.0 mypy-extensions==1.2.0 "
           "cloudpickle==3.1.3 pyvers==0.2.3")
TABLE, FEATURE = "item_table", "item"


def check(cfg: Config, world: int, device: torch.device) -> None:
    """One-line errors for a sharded run that cannot run here (called when training starts)."""
    if not cfg.sharded_embeddings:
        return
    if world <= 1:
        raise ConfigError("config key 'sharded_embeddings': needs several processes; start the run with "
                          "torchrun --nproc_per_node=2 (or more) -m dmirec train ...")
    if device.type != "cpu":
        raise ConfigError(f"config key 'sharded_embeddings': runs on CPU (gloo) only, got device {device.type!r}")
    try:
        import torchrec.distributed  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"config key 'sharded_embeddings': needs the TorchRec extra ({err}); "
                          f"install it with: {INSTALL}") from None


class ShardedItemTable(nn.Module):
    """Drop-in for the model's ``item_emb``: this rank's rows of the table, sharded by TorchRec.

    ``forward(ids)`` gives ``(*ids.shape, D)`` rows: from the whole table while one is gathered
    (:func:`gathered`, rank 0 during validation), else from the step's :meth:`prefetch`.
    """

    sharded = True

    def __init__(self, init: torch.Tensor):
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
        from torchrec.distributed.comm_ops import set_gradient_division
        from torchrec.distributed.shard import shard
        from torchrec.distributed.sharding_plan import row_wise
        from torchrec.distributed.types import ShardingEnv

        self.num_rows, self.dim = init.shape  # (N + 1, D)
        self.world, self.rank = tdist.get_world_size(), tdist.get_rank()
        rng = torch.get_rng_state()  # TorchRec initialises its blocks from the global generator: keep the run's stream
        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
            name=TABLE, embedding_dim=self.dim, num_embeddings=self.num_rows, feature_names=[FEATURE],
            pooling=PoolingType.SUM)], device=torch.device("meta"))
        ebc = shard(ebc, {TABLE: row_wise(compute_kernel="dense")},
                    env=ShardingEnv.from_process_group(tdist.group.WORLD), device=torch.device("cpu"))
        torch.set_rng_state(rng)
        set_gradient_division(True)  # row gradients averaged over ranks, as DDP averages the rest
        self.__dict__["ebc"] = ebc  # not a submodule: DDP, parameters() and state_dict() do not see it
        self.__dict__["block"] = next(iter(ebc.parameters()))  # (rows here, D), this rank's rows
        meta = ebc.state_dict()[f"embedding_bags.{TABLE}.weight"].metadata().shards_metadata
        self.layout = sorted((int(str(m.placement).split("/")[0].split(":")[1]), m.shard_offsets[0], m.shard_sizes[0])
                             for m in meta)  # [(rank, first row, rows)]
        _, self.offset, self.rows_here = self.layout[self.rank]
        with torch.no_grad():
            self.block.copy_(init[self.offset:self.offset + self.rows_here])
        self.full: torch.Tensor | None = None  # (N + 1, D) while gathered (rank 0)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- lookups --------------------------------------------------------------------------------
    def prefetch(self, ids: torch.Tensor) -> None:
        """Look up every distinct id of ``ids`` in ONE sharded lookup (a collective: every rank
        calls it, with the same ``ids.numel()``); this step's ``forward`` reads from it."""
        from torchrec import KeyedJaggedTensor

        uniq = torch.unique(ids.reshape(-1))  # (U,) sorted
        real = uniq[uniq > 0]  # (R,) the padding id is not looked up
        lengths = torch.zeros(ids.numel(), dtype=torch.int32)  # one bag per id slot: same count on every rank
        lengths[:len(real)] = 1
        pooled = self.ebc(KeyedJaggedTensor(keys=[FEATURE], values=real, lengths=lengths))[FEATURE]  # (ids, D)
        rows = pooled[:len(real)]  # (R, D)
        if len(real) < len(uniq):
            rows = torch.cat([rows.new_zeros(1, self.dim), rows])  # (U, D), row 0 = padding
        self._cache = (uniq, rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.full is not None:
            return F.embedding(ids, self.full)  # (*ids.shape, D)
        if self._cache is None:
            raise RuntimeError("the sharded item table is read through prefetch() in training and gathered() "
                               "in evaluation")
        uniq, rows = self._cache
        pos = torch.searchsorted(uniq, ids).clamp_(max=len(uniq) - 1)  # (*ids.shape,)
        if not torch.equal(uniq[pos], ids):
            raise RuntimeError("sharded item table: ids outside this step's prefetched ids")
        return rows[pos]  # (*ids.shape, D)

    @property
    def weight(self) -> torch.Tensor:
        """The whole table (only while gathered, on rank 0)."""
        if self.full is None:
            raise RuntimeError("the sharded item table is whole only inside gathered() (rank 0)")
        return self.full

    # --- whole-table views ----------------------------------------------------------------------
    def gather_rows(self, block: torch.Tensor) -> torch.Tensor | None:
        """Every rank's ``(rows here, ...)`` block stacked into ``(N + 1, ...)`` on rank 0 (None
        elsewhere); a collective."""
        most = max(n for _, _, n in self.layout)
        buf = block.new_zeros((most, *block.shape[1:]))
        buf[:len(block)] = block
        parts = [torch.empty_like(buf) for _ in range(self.world)] if self.rank == 0 else None
        tdist.gather(buf, parts, dst=0)
        if parts is None:
            return None
        return torch.cat([parts[r][:n] for r, _, n in sorted(self.layout, key=lambda x: x[1])])

    def local_rows(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole-table tensor."""
        return full[self.offset:self.offset + self.rows_here]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """``weight``: the whole table, as an unsharded ``nn.Embedding`` saves it (gathered to rank 0
        here unless already gathered; other ranks save nothing)."""
        full = self.full if self.full is not None else self.gather_rows(self.block.detach())
        if full is not None:
            destination[prefix + "weight"] = full.detach().clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Each rank takes its rows of a whole-table ``weight``."""
        key = prefix + "weight"
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k != key)
        if key not in state_dict:
            missing_keys.append(key)
            return
        full = state_dict[key]
        if tuple(full.shape) != (self.num_rows, self.dim):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(full.shape)}, the "
                              f"sharded table is {(self.num_rows, self.dim)}")
            return
        with torch.no_grad():
            self.block.copy_(self.local_rows(full))


def install(model: nn.Module) -> ShardedItemTable:
    """Replace ``model.item_emb`` by its sharded version, starting from its current rows."""
    table = getattr(model, "item_emb", None)
    if not isinstance(table, nn.Embedding):
        raise ConfigError(f"config key 'sharded_embeddings': model {type(model).__name__} has no item table")
    sharded = ShardedItemTable(table.weight.detach())
    model.item_emb = sharded
    return sharded


def is_sharded(model: nn.Module) -> bool:
    return getattr(getattr(model, "item_emb", None), "sharded", False)


@contextlib.contextmanager
def gathered(model: nn.Module):
    """The whole table on rank 0 for the duration (every rank enters); a no-op when not sharded."""
    if not is_sharded(model):
        yield
        return
    table = model.item_emb
    table.full = table.gather_rows(table.block.detach())
    try:
        yield
    finally:
        table.full = None


def wrap(model: nn.Module, loss_fn: Callable[..., torch.Tensor], device: torch.device) -> nn.Module:
    """DDP over the replicated parameters, with each step's ids prefetched from the sharded table."""
    from .dist import wrap as ddp_wrap

    def loss_with_prefetch(m, history, mask, target, neg_ids, users):
        m.item_emb.prefetch(torch.cat([history.reshape(-1), target, neg_ids]))  # one lookup per step
        return loss_fn(m, history, mask, target, neg_ids, users)

    return ddp_wrap(model, loss_with_prefetch, device, find_unused=False)


class ShardedAdam:
    """Adam over this rank's block of the table; its state is saved whole on rank 0 (like the table)."""

    def __init__(self, table: ShardedItemTable, lr: float, weight_decay: float):
        self.table = table
        self.opt = torch.optim.Adam([table.block], lr=lr, weight_decay=weight_decay, fused=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.opt.step()

    def state_dict(self) -> dict[str, Any]:
        """A collective: the moments gathered to rank 0 (other ranks get only the step)."""
        state = self.opt.state.get(self.table.block, {})
        out: dict[str, Any] = {"sharded_table_adam": True, "step": float(state["step"]) if state else 0.0}
        if state:
            out["exp_avg"] = self.table.gather_rows(state["exp_avg"])  # (N + 1, D) on rank 0
            out["exp_avg_sq"] = self.table.gather_rows(state["exp_avg_sq"])  # (N + 1, D) on rank 0
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not state.get("sharded_table_adam"):
            raise ConfigError("the checkpoint's optimiser state is not a sharded table's (was the run "
                              "started without sharded_embeddings?)")
        if not state["step"]:
            return
        sd = self.opt.state_dict()
        sd["state"] = {0: {"step": torch.tensor(state["step"]),
                           "exp_avg": self.table.local_rows(state["exp_avg"]).clone(),
                           "exp_avg_sq": self.table.local_rows(state["exp_avg_sq"]).clone()}}
        self.opt.load_state_dict(sd)


def make_optimizer(model: nn.Module, cfg: Config):
    """Fused Adam over the replicated parameters and :class:`ShardedAdam` over this rank's rows."""
    from . import optim

    dense = optim.make_optimizer(model, cfg)  # the table is not among model.parameters()
    return optim.Optimizers([dense, ShardedAdam(model.item_emb, cfg.lr, cfg.weight_decay)])
