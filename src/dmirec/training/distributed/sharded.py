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
  gradient. With dense updates a ``torch.optim.Adam`` over the block (:class:`ShardedAdam`)
  applies the run's ``lr`` and ``weight_decay``; Adam is elementwise, so P ranks each updating
  their block take the step one process takes on the whole table, at O(N / P) per step. With
  row-sparse updates (``embedding_optimizer``: ``sparse``, or ``auto`` from ``sparse_min_items``
  items up, as in one process) the ranks all-gather the step's looked-up ids and each updates only
  its touched rows with ``torch.optim.SparseAdam``: the one-process sparse step. Both keep the
  dense kernel's gradient of the whole block (zero-filled every step). ``rowwise_adagrad``
  shards with TorchRec's ``fused`` kernel instead (:class:`FusedRowwiseAdagrad`): row-wise Adagrad
  at ``table_lr`` applied inside the backward to the touched rows, no block gradient, O(batch)
  per step; a different optimiser (TorchRec's fused optimisers run on CPU only as SGD / row-wise
  Adagrad).
* *Evaluation* (validation and test, :func:`rank_users`). Every rank computes the query vectors
  of its share of the users (the history rows through one sharded lookup per batch), the queries
  are all-gathered, every rank searches its own rows exactly (top n per user, history exclusion
  translated to its rows), and the P candidate lists are all-gathered and merged by score (then
  item id): the same top n as one exact search over the whole table.
* *Checkpoints.* ``best.pt`` / ``last.pt`` hold the replicated parameters and a manifest
  (``table_shards``); each rank writes its rows (and, in ``last``, its Adam moments) to its own
  file beside them (:func:`save_table`), all written before rank 0 writes the manifest, and the
  previous set removed only after. ``--resume`` with any P >= 2 reads each rank's row range out
  of the files (memory-mapped: :func:`read_rows`). :func:`dmirec.runs.rundir.load_checkpoint`
  assembles the whole table for ``evaluate``, ``export`` and ``serve`` in one process, which
  therefore do need the whole table in memory (a bundle holds it).

Memory per rank: its block, its gradient and Adam's two moments, ``4 (N + 1) D / P`` floats
(with the fused kernel: the block and one accumulator per row);
the gradient is freed before each validation, whose faiss index holds one more copy of the
block (``scripts/profile_sharded_memory.py`` prints the RSS after each phase). The step costs O(N / P) per rank (dense
Adam over the block; ``embedding_optimizer=sparse`` is not available here). Ranks on several
machines need a shared file system for the run directory (as ``--resume`` already does).

TorchRec is an optional extra (``INSTALL``); nothing here imports it until a sharded run starts.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np

import torch
import torch.distributed as tdist
from torch import nn

from ...config import SHARDED_MODELS as MODELS  # noqa: F401 (re-exported)
from ...config import Config, ConfigError

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
            raise RuntimeError("the sharded item table is read after prefetch() (training and dmirec.training.distributed.sharded.rank_users)")
        uniq, rows = self._cache
        pos = torch.searchsorted(uniq, ids).clamp_(max=len(uniq) - 1)  # (*ids.shape,)
        if not torch.equal(uniq[pos], ids):
            raise RuntimeError("sharded item table: ids outside this step's prefetched ids")
        return rows[pos]  # (*ids.shape, D)

    @property
    def weight(self) -> torch.Tensor:
        raise RuntimeError("a sharded item table is never whole in one process: read rows with item_emb(ids) after "
                           "prefetch(), search with dmirec.training.distributed.sharded.rank_users, load a checkpoint's whole table with "
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
        """Nothing: the rows go to this rank's table file (:func:`save_table`)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A whole-table ``weight`` (an unsharded checkpoint, e.g. a warm start): each rank takes its
        rows. Without one the rows come from the table files (:func:`load_table`)."""
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
    from ...models.base import blocked_table_rows

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
    from .ddp import wrap as ddp_wrap

    def loss_with_prefetch(m, history, mask, target, neg_ids, users):
        m.item_emb.prefetch(torch.cat([history.reshape(-1), target, neg_ids]))  # one lookup per step
        return loss_fn(m, history, mask, target, neg_ids, users)

    return ddp_wrap(model, loss_with_prefetch, device, find_unused=False)


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
        """A marker only: the moments are in the table files (:func:`save_table`)."""
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
    from .. import optim

    dense = optim.make_optimizer(model, cfg)  # the table is not among model.parameters()
    if cfg.embedding_optimizer == "rowwise_adagrad":
        return optim.Optimizers([dense, FusedRowwiseAdagrad(model.item_emb)])
    table = ShardedAdam(model.item_emb, cfg.lr, cfg.weight_decay, optim.row_sparse(cfg, model.item_emb.num_rows - 1))
    return optim.Optimizers([dense, table])


# --- table files ---------------------------------------------------------------------------------
# A checkpoint NAME.pt of a sharded run holds ``table_shards``, a manifest:
#   {"key": "item_emb.weight", "rows": N + 1, "dim": D, "step": S,
#    "files": [(file name, first row, rows), ...] in row order}
# and each rank's rows are in NAME.table.sS.rRofP.pt beside it: {"first", "weight" (rows, D)} plus,
# in ``last``, the optimiser's per-row state: Adam's "adam_step", "exp_avg", "exp_avg_sq", or the
# fused row-wise Adagrad's "adagrad_momentum" (rows,).


def save_table(table: ShardedItemTable, ckpt_dir: Path, name: str, step: int, moments: bool) -> dict[str, Any]:
    """Every rank writes its rows (and with ``moments`` its optimiser's per-row state) atomically; returns the
    manifest for ``NAME.pt``. A collective, ending when every rank's file is on disk."""
    from ...runs.rundir import save_checkpoint

    def file(rank: int) -> str:
        return f"{name}.table.s{step}.r{rank}of{table.world}.pt"
    block = table.block.detach()  # saved as it is (no copy) unless it is a view into a larger storage
    if block.untyped_storage().nbytes() != block.numel() * block.element_size():
        block = block.clone()
    obj: dict[str, Any] = {"first": table.offset, "weight": block}
    if moments and table.optimizer is not None:
        obj.update(table.optimizer.state_rows())
    save_checkpoint(ckpt_dir / file(table.rank), obj)
    tdist.barrier()
    files = [(file(r), first, rows) for r, first, rows in sorted(table.layout, key=lambda x: x[1])]
    return {"key": "item_emb.weight", "rows": table.num_rows, "dim": table.dim, "step": step, "files": files}


def remove_stale(ckpt_dir: Path, name: str, manifest: dict[str, Any]) -> None:
    """Delete ``NAME.table.*`` files the manifest does not list (called after ``NAME.pt`` is written)."""
    keep = {f for f, _, _ in manifest["files"]}
    for path in Path(ckpt_dir).glob(f"{name}.table.*.pt"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def read_rows(ckpt_dir: Path, manifest: dict[str, Any], start: int, stop: int, field: str = "weight"
              ) -> torch.Tensor:
    """Rows ``start:stop`` of the table (or of an Adam moment) from the table files of a checkpoint,
    reading only those rows (the files are memory-mapped): any P can read any P's files."""
    out: torch.Tensor | None = None  # (stop - start, *the field's trailing shape)
    for fname, first, rows in manifest["files"]:
        lo, hi = max(start, first), min(stop, first + rows)
        if lo >= hi:
            continue
        path = Path(ckpt_dir) / fname
        try:
            part = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: a table file of this checkpoint is missing") from None
        if field not in part:
            raise KeyError(f"{path}: has no {field!r} (a best checkpoint keeps no optimiser state)")
        piece = part[field][lo - first:hi - first]
        if out is None:
            out = torch.empty((stop - start, *piece.shape[1:]), dtype=piece.dtype)
        out[lo - start:hi - start] = piece
        del part, piece
    return out if out is not None else torch.empty(0, manifest["dim"])


def load_table(table: ShardedItemTable, ckpt_dir: Path, manifest: dict[str, Any], moments: bool = False) -> None:
    """This rank's rows (and with ``moments`` its optimiser's per-row state) from a checkpoint's table files."""
    if (manifest["rows"], manifest["dim"]) != (table.num_rows, table.dim):
        raise ConfigError(f"{ckpt_dir}: the checkpoint's table is {manifest['rows']} x {manifest['dim']}, "
                          f"this run's {table.num_rows} x {table.dim}")
    a, b = table.offset, table.offset + table.rows_here
    with torch.no_grad():
        table.block.copy_(read_rows(ckpt_dir, manifest, a, b))
    if moments and table.optimizer is not None:
        first = Path(ckpt_dir) / manifest["files"][0][0]
        saved = torch.load(first, map_location="cpu", mmap=True, weights_only=True)
        scalars = {k: v for k, v in saved.items() if not isinstance(v, torch.Tensor)}
        table.optimizer.load_rows(scalars, lambda field: read_rows(ckpt_dir, manifest, a, b, field))


# --- evaluation ----------------------------------------------------------------------------------
def _all_gather(t: torch.Tensor) -> torch.Tensor:
    """``(m, ...)`` from every rank (the same m) stacked in rank order: ``(P * m, ...)``."""
    parts = [torch.empty_like(t) for _ in range(tdist.get_world_size())]
    tdist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def rank_users(model: nn.Module, eval_set, n: int, backend: str = "auto", exclude_history: bool = False,
               batch_size: int = 1024):
    """The exact top-n of every evaluation user with a sharded table; a collective, every rank gets
    the whole :class:`~dmirec.retrieval.SearchResult` (see the module docstring)."""
    from ...retrieval import merge_candidates
    from ...retrieval.exact import as_exclude_csr

    table: ShardedItemTable = model.item_emb
    world, rank = table.world, table.rank
    users = len(eval_set.history)
    per = -(-users // world)  # users per rank, the last rank's share padded with user 0
    mine = np.arange(rank * per, (rank + 1) * per)
    mine = np.where(mine < users, mine, 0)
    was_training = model.training
    model.eval()
    parts = []
    for s in range(0, per, batch_size):  # the same number of batches, of the same sizes, on every rank
        rows = mine[s:s + batch_size]
        hist = torch.from_numpy(np.ascontiguousarray(eval_set.history[rows]))  # (b, L)
        mask = torch.from_numpy(np.ascontiguousarray(eval_set.mask[rows]))  # (b, L)
        table.prefetch(hist)
        parts.append(model.user_vectors(hist, mask).float())  # (b, K, D)
    model.train(was_training)
    k = getattr(model, "num_interests", 1)
    local = torch.cat(parts) if parts else torch.zeros(0, k, table.dim)  # (per, K, D)
    queries = _all_gather(local)[:users].numpy()  # (U, K, D)

    exclude = as_exclude_csr(eval_set.full_history, users, table.num_rows - 1) if exclude_history else None
    found = _search_rows(table, queries, n, backend, exclude)  # (U, n) of this rank's rows, global ids

    # the P lists of each user merged: score descending, then item id (the ranks' rows are disjoint)
    def gathered(x: np.ndarray) -> np.ndarray:  # (U, n) from every rank -> (U, P * n)
        return _all_gather(torch.from_numpy(x)).reshape(world, users, n).permute(1, 0, 2).reshape(users, -1).numpy()
    return merge_candidates(gathered(found.ids), gathered(found.scores), gathered(found.interest), n)


def _search_rows(table: ShardedItemTable, queries: np.ndarray, n: int, backend: str, exclude) -> "SearchResult":
    """Exact top n of each user among this rank's rows (global ids; the padding row never).

    faiss (``auto`` on the CPU): an ``IDMap2,Flat`` index holding the rows under their global ids,
    filled from the block without another copy. torch: the exact torch search over the block with
    a padding row in front (one copy of the block)."""
    from ...retrieval import ExcludeCSR, SearchResult, resolve_backend
    from ...retrieval.exact import ExactTorchSearch, _empty_result
    from ...retrieval.faiss_search import _slice_csr, add_rows, item_index, search_index

    block = table.block.detach()  # (rows here, D)
    users = len(queries)
    if resolve_backend(backend) == "torch":
        shift = max(table.offset - 1, 0)  # local id j is global id j + shift; local row 0 is padding
        items = block if table.offset == 0 else torch.cat([block.new_zeros(1, table.dim), block])
        local = None
        if exclude is not None:
            keep = (exclude.indices > shift) & (exclude.indices < table.offset + table.rows_here)  # (nnz,)
            owner = np.repeat(np.arange(users), np.diff(exclude.indptr))  # (nnz,)
            local = ExcludeCSR(indptr=np.concatenate([[0], np.cumsum(np.bincount(owner[keep], minlength=users))]
                                                     ).astype(np.int64),
                               indices=(exclude.indices[keep] - shift).astype(np.int64))
        found = ExactTorchSearch(items).search(queries, n, exclude=local)
        return SearchResult(ids=np.where(found.ids > 0, found.ids + shift, -1), scores=found.scores,
                            interest=found.interest)
    first = 1 if table.offset == 0 else 0  # rank 0's row 0 is the padding row
    index = add_rows(item_index("Flat", table.dim), block.numpy()[first:], table.offset + first)  # labels = ids
    parts = [search_index(index, queries[u0:u0 + 1024], n, _slice_csr(exclude, u0, min(users, u0 + 1024)))
             for u0 in range(0, users, 1024)]
    if not parts:
        return _empty_result(0, n)
    return SearchResult(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ids", "scores", "interest")))
