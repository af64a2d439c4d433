"""Exact full-catalogue evaluation under the ComiRec/REMI protocol.

For every user of a split: the model turns the last ``seq_len`` history items into K query
vectors, each retrieves its top N from all items, the K*N candidates are merged by score,
de-duplicated and cut to N (:mod:`dmirec.retrieval`), and the metrics of :mod:`dmirec.evaluation.metrics`
compare the list with the targets. History items can optionally be excluded from retrieval.
The default backend ("auto") is faiss flat on the CPU and the torch search on a CUDA device, the
faster exact search in each place; on a CUDA device the torch backend searches on the GPU (the faiss
backend stays on the CPU).
Besides the per-user metrics, the result holds the catalogue coverage at each cutoff; with
``per_user=True`` it also holds every user's metric values (``dmirec compare`` pairs users on them)
and the recommended lists.

Repeats (:mod:`dmirec.repeats.channel`): the ``repeat`` model's ranking and the optional repeat channel
run after the search through :func:`dmirec.repeats.channel.retrieve`, the function serving and batch use
too. Two views: the protocol as published (targets that repeat history items count) and, with
``new_items_only``, the new-items view (:func:`new_items_view`: targets already in the history
removed, users left without a target skipped and counted, history items excluded from the
candidates).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..collab.neighbours import fill_bank
from ..data.dataset import PreparedData, load_dataset
from ..data.sampler import EvalSet, eval_split
from ..repeats.channel import RepeatChannel, channel_from_config, model_stage, retrieve
from ..repeats.params import with_repeat_params
from ..retrieval import SearchResult, make_searcher, resolve_backend
from ..retrieval.distributed import rank_users as sharded_rank_users
from ..runs.rundir import load_trained_model, read_data_ref
from .metrics import catalogue_coverage, drop_seen_targets, per_user as per_user_metrics, summarize

METRIC_NS = (20, 50)


def metric_cutoffs(cfg) -> tuple[int, ...]:
    """The cutoffs a run reports: its ``metric_ns`` plus 20 and 50 (always there: the checkpoint is
    chosen on valid Recall@50 and every table prints @20 and @50)."""
    return tuple(sorted(set(getattr(cfg, "metric_ns", METRIC_NS)) | set(METRIC_NS)))


@torch.no_grad()
def user_vectors(model, eval_set: EvalSet, batch_size: int = 1024, device: str | torch.device = "cpu") -> np.ndarray:
    """Query vectors of every evaluation user: (U, K, D) float32."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(eval_set.history), batch_size):
        hist = torch.from_numpy(eval_set.history[start:start + batch_size]).to(device)  # (b, L)
        mask = torch.from_numpy(eval_set.mask[start:start + batch_size]).to(device)  # (b, L)
        out.append(model.user_vectors(hist, mask).float().cpu().numpy())  # (b, K, D)
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 1, model.embedding_dim), np.float32)


def new_items_view(eval_set: EvalSet) -> tuple[EvalSet, int]:
    """The users and targets of the new-items view, and how many users it skips (no new target)."""
    targets, keep = drop_seen_targets(eval_set.targets, eval_set.full_history)
    rows = np.flatnonzero(keep)
    view = EvalSet(eval_set.history[rows], eval_set.mask[rows], [targets[r] for r in rows],
                   [eval_set.full_history[r] for r in rows], eval_set.users[rows])
    return view, int(len(keep) - len(rows))


@torch.no_grad()
def rank_users(model, eval_set: EvalSet, n: int, backend: str = "auto", exclude_history: bool = False,
               batch_size: int = 1024, device: str | torch.device = "cpu",
               repeat: RepeatChannel | None = None) -> SearchResult:
    """The top-n list of every evaluation user: search, then the model's own repeat stage or ``repeat``.

    A model whose item table is sharded over torchrun ranks (:mod:`dmirec.training.distributed.sharded`) is searched by
    every rank together, each over its own rows (a collective: every rank calls this)."""
    if getattr(getattr(model, "item_emb", None), "sharded", False):
        if repeat is not None or model_stage(model) is not None:
            raise ValueError("a sharded item table cannot be searched with a repeat stage")

        return sharded_rank_users(model, eval_set, n, backend, exclude_history, batch_size)
    if hasattr(model, "rank_histories"):  # item-to-item models score the whole history themselves
        if repeat is not None:
            raise ValueError(f"the repeat channel needs query vectors; model {type(model).__name__} has none "
                             f"(merge it with the repeat channel in a recipe: dmirec fit-channels)")
        return model.rank_histories(eval_set.full_history, n, eval_set.full_history if exclude_history else None)
    queries = user_vectors(model, eval_set, batch_size, device)  # (U, K, D)
    items = model.item_embeddings().detach().float()  # (N + 1, D)
    items_np = items.cpu().numpy()  # (N + 1, D)
    backend = resolve_backend(backend, device)
    if backend == "torch" and torch.device(device).type == "cuda":  # exact blocked search on the GPU
        searcher = make_searcher(items, backend, device=torch.device(device))
    else:
        searcher = make_searcher(items_np, backend)
    return retrieve(searcher.search, queries, eval_set.full_history, n, exclude_history=exclude_history,
                    stage=model_stage(model) or repeat, item_embeddings=items_np)


@torch.no_grad()
def evaluate_model(model, data: PreparedData, split: str = "valid", seq_len: int = 20, ns=METRIC_NS,
                   backend: str = "auto", exclude_history: bool = False, batch_size: int = 1024,
                   max_users: int = 0, device: str | torch.device = "cpu",
                   eval_set: EvalSet | None = None, per_user: bool = False, *,
                   repeat: RepeatChannel | None = None, new_items_only: bool = False) -> dict:
    """Metrics of ``model`` on one split's users; adds ``coverage@n`` and ``seconds`` (wall time).

    ``per_user=True`` adds ``"per_user"``: ``{"user": (U,) user ids, "recall@n": (U,) ..., ...}`` and
    ``"recs"``: the (U, max(ns)) recommended ids (numpy arrays, so not for JSON lines).
    ``repeat``: the repeat channel (None: off). ``new_items_only``: the new-items view (history
    excluded whatever ``exclude_history`` says); adds ``skipped_users``.
    """
    start = time.perf_counter()
    if eval_set is None:
        eval_set = eval_split(data.splits[split], seq_len, max_users)
    skipped = 0
    if new_items_only:
        eval_set, skipped = new_items_view(eval_set)
        exclude_history = True
    result = rank_users(model, eval_set, max(ns), backend, exclude_history, batch_size, device, repeat)
    metrics = summarize(result.ids, eval_set.targets, ns)
    num_items = data.num_items if data is not None else model.num_items
    for n in ns:
        metrics[f"coverage@{int(n)}"] = catalogue_coverage(result.ids, num_items, n)
    if per_user:
        metrics["per_user"] = {"user": eval_set.users, **per_user_metrics(result.ids, eval_set.targets, ns)}
        metrics["recs"] = result.ids
    if new_items_only:
        metrics["skipped_users"] = skipped
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def load_run(run_dir: str | Path, which: str = "best", device: str = "cpu", overrides: dict | None = None):
    """A run's model (with evaluation-time ``overrides``), config and dataset: (model, cfg, data).

    A model that reads an interest bank its checkpoint does not hold gets one built from the
    run's training users (deterministic: same weights, same bank)."""
    model, cfg = load_trained_model(run_dir, which=which, device=device, overrides=overrides)
    data = load_dataset(read_data_ref(Path(run_dir))["path"], mmap=True)
    bank = getattr(model, "bank", None)
    if bank is not None and bank.size == 0:
        fill_bank(model, cfg, data.splits["train"], device)
    return model, cfg, data


def evaluate_run(run_dir: str | Path, split: str = "test", exclude_history: bool | None = None,
                 backend: str | None = None, which: str = "best", device: str = "cpu",
                 overrides: dict | None = None, ns: tuple[int, ...] | None = None, per_user: bool = False, *,
                 new_items_only: bool | None = None, repeat_channel: bool | None = None,
                 repeat_params: str | Path | None = None) -> dict:
    """Load a run's checkpoint (with evaluation-time ``overrides``) and its dataset, and evaluate on
    ``split`` (cutoffs: ``ns`` plus 20 and 50, by default the run's ``metric_ns``).

    The repeat channel's parameters come from the run's config, then ``RUN_DIR/repeat.json``
    (written by ``dmirec fit-repeat``) or the file ``repeat_params``; ``repeat_channel`` turns the
    channel on or off whatever they say. ``new_items_only`` None: the config's ``new_items_only``.
    """
    model, cfg, data = load_run(run_dir, which, device, overrides)
    cfg = with_repeat_params(cfg, run_dir, repeat_params)
    if repeat_channel is not None:
        cfg = cfg.replace(repeat_channel=repeat_channel)
    cutoffs = metric_cutoffs(cfg if ns is None else cfg.replace(metric_ns=tuple(ns)))
    return evaluate_model(model, data, split, cfg.seq_len, cutoffs,
                          backend or cfg.retrieval_backend,
                          cfg.exclude_history if exclude_history is None else exclude_history,
                          cfg.eval_batch_size, 0, device, per_user=per_user, repeat=channel_from_config(cfg),
                          new_items_only=cfg.new_items_only if new_items_only is None else new_items_only)
