"""A row-wise sharded item table on TorchRec, for ``torchrun ... train --sharded_embeddings=true``.

What is sharded. The item table ``(N + 1, D)`` of the model is replaced by
:class:`ShardedItemTable`: a TorchRec ``EmbeddingBagCollection`` with one table, sharded
ROW-WISE over the P ranks (``torchrec.distributed.shard`` with a ``row_wise`` plan, gloo on
CPU): rank r holds a contiguous block of about ``(N + 1) / P`` rows and nothing else of the
table. Everything else in the model is small and stays replicated under
``DistributedDataParallel`` (:mod:`dmirec.training.distributed.ddp`), which averages its gradients as before. The
TorchRec module is kept outside the model's module tree, so DDP, ``model.parameters()`` and
``model.state_dict()`` never see TorchRec's own parameter names.

No process ever holds the whole table:

* *Start.* The model is built with its table on the meta device
  (:func:`dmirec.models.base.item_table_on_meta`) and each rank draws only its own rows
  (``table_init=blocked``: :func:`dmirec.models.base.blocked_table_rows`; an unsharded run with
  ``table_init=blocked`` starts from the same table).
* *Lookups.* One training step makes ONE sharded lookup: the step's history, target and negative
  ids are deduplicated and looked up together (:meth:`ShardedItemTable.prefetch`, a
  KeyedJaggedTensor with one id per bag: TorchRec routes each id to the rank that owns its row
  and sends the row back, and in the backward pass sends each row's gradient to its owner). The
  model then reads rows through ``item_emb(ids)`` as always, from that prefetched block; the
  padding id 0 is a constant zero row that is never looked up, like ``padding_idx=0``. A row's
  gradient arriving at its owner is the sum over ranks of each rank's mean-loss gradient divided
  by P (TorchRec's ``gradient_division``), i.e. the gradient of the mean loss over the global
  batch, what DDP's average gives the replicated parameters (tested against one process).
* *Optimiser.* TorchRec's ``dense`` compute kernel gives this rank's block an ordinary dense
  gradient. With dense updates a ``torch.optim.Adam`` over the block (:class:`~dmirec.training.distributed.sharded_optim.ShardedAdam`)
  applies the run's ``lr`` and ``weight_decay``; Adam is elementwise, so P ranks each updating
  their block take the step one process takes on the whole table, at O(N / P) per step. With
  row-sparse updates (``embedding_optimizer``: ``sparse``, or ``auto`` from ``sparse_min_items``
  items up, as in one process) the ranks all-gather the step's looked-up ids and each updates only
  its touched rows with ``torch.optim.SparseAdam``: the one-process sparse step. Both keep the
  dense kernel's gradient of the whole block (zero-filled every step). ``rowwise_adagrad``
  shards with TorchRec's ``fused`` kernel instead (:class:`~dmirec.training.distributed.sharded_optim.FusedRowwiseAdagrad`): row-wise Adagrad
  at ``table_lr`` applied inside the backward to the touched rows, no block gradient, O(batch)
  per step; a different optimiser (TorchRec's fused optimisers run on CPU only as SGD / row-wise
  Adagrad).
* *Evaluation* (validation and test, :func:`dmirec.retrieval.distributed.rank_users`). Every rank computes the query vectors
  of its share of the users (the history rows through one sharded lookup per batch), the queries
  are all-gathered, every rank searches its own rows exactly (top n per user, history exclusion
  translated to its rows), and the P candidate lists are all-gathered and merged by score (then
  item id): the same top n as one exact search over the whole table.
* *Checkpoints.* ``best.pt`` / ``last.pt`` hold the replicated parameters and a manifest
  (``table_shards``); each rank writes its rows (and, in ``last``, its Adam moments) to its own
  file beside them (:func:`~dmirec.training.distributed.sharded_checkpoint.save_table`), all written before rank 0 writes the manifest, and the
  previous set removed only after. ``--resume`` with any P >= 2 reads each rank's row range out
  of the files (memory-mapped: :func:`dmirec.runs.table_files.read_rows`). :func:`dmirec.runs.rundir.load_checkpoint`
  assembles the whole table for ``evaluate``, ``export`` and ``serve`` in one process, which
  therefore do need the whole table in memory (a bundle holds it).

Memory per rank: its block, its gradient and Adam's two moments, ``4 (N + 1) D / P`` floats
(with the fused kernel: the block and one accumulator per row);
the gradient is freed before each validation, whose faiss index holds one more copy of the
block (``scripts/profile_sharded_memory.py`` prints the RSS after each phase). The step costs O(N / P) per rank
with dense Adam over the block (row-sparse Adam still zero-fills the block's gradient; the fused
kernel is O(batch)). Ranks on several
machines need a shared file system for the run directory (as ``--resume`` already does).

TorchRec is an optional extra (``INSTALL``); nothing here imports it until a sharded run starts.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.distributed as tdist
from torch import nn

from ...config import SHARDED_MODELS as MODELS  # noqa: F401 (re-exported)
from ...config import Config, ConfigError
from ...models.base import blocked_table_rows
from .ddp import wrap as ddp_wrap

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

    ``rows(start, stop)`` gives the initial rows ``start:stop`` (only this rank's are asked for).
    ``forward(ids)`` gives ``(*ids.shape, D)`` rows from the last :meth:`prefetch`, which every
    rank calls together (a collective).
    """

    sharded = True

    def __init__(self, num_rows: int, dim: int, rows: Callable[[int, int], torch.Tensor],
                 fused_adagrad_lr: float | None = None):
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
        from torchrec.distributed.comm_ops import set_gradient_division
        from torchrec.distributed.shard import shard
        from torchrec.distributed.sharding_plan import row_wise
        from torchrec.distributed.types import ShardingEnv
        from torchrec.optim import RowWiseAdagrad
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        self.num_rows, self.dim = num_rows, dim  # (N + 1, D)
        self.world, self.rank = tdist.get_world_size(), tdist.get_rank()
        rng = torch.get_rng_state()  # TorchRec initialises its blocks from the global generator: keep the run's stream
        ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
            name=TABLE, embedding_dim=self.dim, num_embeddings=self.num_rows, feature_names=[FEATURE],
            pooling=PoolingType.SUM)], device=torch.device("meta"))
        self.fused = fused_adagrad_lr is not None  # rows updated inside the backward (row-wise Adagrad)
        if self.fused:
            apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": fused_adagrad_lr})
        ebc = shard(ebc, {TABLE: row_wise(compute_kernel="fused" if self.fused else "dense")},
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
            self.block.copy_(rows(self.offset, self.offset + self.rows_here))
        self.optimizer: "ShardedAdam | FusedRowwiseAdagrad | None" = None  # its per-row state is saved with the rows
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._looked_up = torch.zeros(0, dtype=torch.long)  # this rank's ids of the last prefetch

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
        self._looked_up = real

    def touched_rows(self) -> torch.Tensor:
        """This rank's rows (local indices, sorted) that any rank looked up in its last
        :meth:`prefetch`; a collective."""
        real = self._looked_up  # (R,) this rank's distinct ids of the step, all > 0
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(self.world)]
        tdist.all_gather(sizes, torch.tensor([len(real)]))
        most = int(max(sizes))
        buf = torch.zeros(most, dtype=torch.long)
        buf[:len(real)] = real
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        tdist.all_gather(parts, buf)
        ids = torch.cat([p[:int(n)] for p, n in zip(parts, sizes)]).unique()  # (U,) sorted
        return ids[(ids >= self.offset) & (ids < self.offset + self.rows_here)] - self.offset

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self._cache is None:
            raise RuntimeError("the sharded item table is read after prefetch() (training and dmirec.retrieval.distributed.rank_users)")
        uniq, rows = self._cache
        pos = torch.searchsorted(uniq, ids).clamp_(max=len(uniq) - 1)  # (*ids.shape,)
        if not torch.equal(uniq[pos], ids):
            raise RuntimeError("sharded item table: ids outside this step's prefetched ids")
        return rows[pos]  # (*ids.shape, D)

    @property
    def weight(self) -> torch.Tensor:
        raise RuntimeError("a sharded item table is never whole in one process: read rows with item_emb(ids) after "
                           "prefetch(), search with dmirec.retrieval.distributed.rank_users, load a checkpoint's whole table with "
                           "dmirec.runs.rundir.load_checkpoint")

    # --- the whole table, for tests -------------------------------------------------------------
    def gather_rows(self, block: torch.Tensor) -> torch.Tensor | None:
        """Every rank's ``(rows here, ...)`` block stacked into ``(N + 1, ...)`` on rank 0 (None
        elsewhere); a collective. Only tests use it: runs never gather the table."""
        most = max(n for _, _, n in self.layout)
        buf = block.new_zeros((most, *block.shape[1:]))
        buf[:len(block)] = block
        parts = [torch.empty_like(buf) for _ in range(self.world)] if self.rank == 0 else None
        tdist.gather(buf, parts, dst=0)
        if parts is None:
            return None
        return torch.cat([parts[r][:n] for r, _, n in sorted(self.layout, key=lambda x: x[1])])

    # --- state ----------------------------------------------------------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """Nothing: the rows go to this rank's table file (:func:`~dmirec.training.distributed.sharded_checkpoint.save_table`)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A whole-table ``weight`` (an unsharded checkpoint, e.g. a warm start): each rank takes its
        rows. Without one the rows come from the table files (:func:`~dmirec.training.distributed.sharded_checkpoint.load_table`)."""
        key = prefix + "weight"
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k != key)
        if key not in state_dict:
            return
        full = state_dict[key]
        if tuple(full.shape) != (self.num_rows, self.dim):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(full.shape)}, the "
                              f"sharded table is {(self.num_rows, self.dim)}")
            return
        with torch.no_grad():
            self.block.copy_(full[self.offset:self.offset + self.rows_here])


def install(model: nn.Module, seed: int, fused_adagrad_lr: float | None = None) -> ShardedItemTable:
    """Replace ``model.item_emb`` by its sharded version. A table on the meta device (the model was
    built inside :func:`~dmirec.models.base.item_table_on_meta`) starts from the blocked draw of
    ``seed``, a real one from its own rows (this rank's slice)."""
    table = getattr(model, "item_emb", None)
    if not isinstance(table, nn.Embedding):
        raise ConfigError(f"config key 'sharded_embeddings': model {type(model).__name__} has no item table")
    num_rows, dim = table.weight.shape
    if table.weight.is_meta:
        rows = functools.partial(blocked_table_rows, seed, dim)
    else:
        rows = lambda a, b: table.weight.detach()[a:b]  # noqa: E731
    sharded = ShardedItemTable(num_rows, dim, rows, fused_adagrad_lr)
    model.item_emb = sharded
    return sharded


def is_sharded(model: nn.Module) -> bool:
    return getattr(getattr(model, "item_emb", None), "sharded", False)


def wrap(model: nn.Module, loss_fn: Callable[..., torch.Tensor], device: torch.device) -> nn.Module:
    """DDP over the replicated parameters, with each step's ids prefetched from the sharded table."""
    def loss_with_prefetch(m, history, mask, target, neg_ids, users):
        m.item_emb.prefetch(torch.cat([history.reshape(-1), target, neg_ids]))  # one lookup per step
        return loss_fn(m, history, mask, target, neg_ids, users)

    return ddp_wrap(model, loss_with_prefetch, device, find_unused=False)
