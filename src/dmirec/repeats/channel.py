"""Repeat-aware retrieval: the user's own history as a ranking (``--model repeat``) or as a channel.

On check-in data most of what a user does next is going back to a place already visited, so the
history itself is a strong retriever. Two stages run after a model's multi-interest search; the
same function (:func:`retrieve`) serves evaluation, the HTTP service and batch candidates, so
all three give the same lists.

Features of every distinct history item *i* of user *u* (:func:`history_features`): its visit
count ``c`` (each visit weighted ``exp(-decay * age)`` when ``decay`` > 0) and the age ``a`` of
its last visit in history positions (0 = the most recent item). The padding item 0 never counts.

* :class:`RepeatFirst` (the ``repeat`` model): history items by count, ties by recency (the more
  recent last visit first), then by lower id; then the model's own list searched with the
  history excluded (most-popular for the ``repeat`` model), so the fill never repeats an item.
* :class:`RepeatChannel` (any model): each history item gets the repeat score
  ``h = log(1 + c) + recency / (1 + a) - bias`` and the merged score
  ``m = s + weight * h * spread``, where ``s = max_k <q_k, e_i>`` is the item's best score under
  the user's interest vectors and ``spread = s_1 - s_R`` the spread of the model's own top
  ``ref_rank`` scores (so the bonus is on each user's score scale; 1 where undefined). Other
  items keep ``m = s``. The list is the top n by ``m`` over the model's top ``max(n, ref_rank)``
  and the history items, plus the model's top n with the history excluded (so that history
  items pushed down by a negative repeat score make room for the next new items); ties keep the
  model's order. With ``weight = 0`` it is the model's list exactly (ids, scores and interests).
  An item outside the model's top list cannot score above that list's last item (its ``s`` is
  capped there: what an approximate index did not return is ranked as the index ranked it).
  With history exclusion the channel has nothing to add.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..retrieval import SearchResult

__all__ = ["HistoryFeatures", "RepeatChannel", "RepeatFirst", "channel_from_config", "history_features",
           "history_item_scores", "merge_channel", "model_stage", "repeat_first", "retrieve"]

Stage = Any  # RepeatFirst | RepeatChannel | None


@dataclass(frozen=True)
class RepeatFirst:
    """The repeat baseline: history by (decayed) count then recency, then the fill list."""

    decay: float = 0.0


@dataclass(frozen=True)
class RepeatChannel:
    """Parameters of the repeat channel (see the module docstring)."""

    weight: float = 0.0
    recency: float = 0.0
    bias: float = 0.0
    decay: float = 0.0
    ref_rank: int = 50


def channel_from_config(cfg) -> RepeatChannel | None:
    """The channel a config asks for (``repeat_channel``), or None when it is off."""
    if not cfg.repeat_channel:
        return None
    return RepeatChannel(cfg.repeat_weight, cfg.repeat_recency, cfg.repeat_bias, cfg.repeat_decay,
                         cfg.repeat_ref_rank)


def model_stage(model) -> RepeatFirst | None:
    """The stage a model carries itself (the ``repeat`` model's ranking), or None."""
    return getattr(model, "repeat_stage", None)


@dataclass(frozen=True)
class HistoryFeatures:
    """Distinct history items per user in CSR form (items of a user in ascending id order)."""

    indptr: np.ndarray  # (B + 1,) int64
    items: np.ndarray  # (H,) int64 item ids >= 1
    count: np.ndarray  # (H,) float64 visits (decay-weighted)
    age: np.ndarray  # (H,) int64 positions since the last visit, 0 = the most recent history item

    @property
    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int64), np.diff(self.indptr))  # (H,)


def history_features(histories: Sequence[Sequence[int] | np.ndarray], decay: float = 0.0) -> HistoryFeatures:
    """Count and last-visit age of every distinct item of each history (oldest first); ids <= 0 are ignored."""
    batch = len(histories)
    parts = [np.asarray(h, dtype=np.int64).ravel() for h in histories]
    lengths = np.fromiter((p.size for p in parts), dtype=np.int64, count=batch)  # (B,)
    flat = np.concatenate(parts) if batch else np.zeros(0, dtype=np.int64)  # (T,)
    rows = np.repeat(np.arange(batch, dtype=np.int64), lengths)  # (T,)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if batch else np.zeros(0, np.int64)
    pos = np.arange(flat.size, dtype=np.int64) - np.repeat(starts, lengths)  # (T,) position in the history
    age = np.repeat(lengths, lengths) - 1 - pos  # (T,)
    keep = flat > 0
    flat, rows, age = flat[keep], rows[keep], age[keep]
    order = np.lexsort((age, flat, rows))  # by user, item, then the most recent visit first
    flat, rows, age = flat[order], rows[order], age[order]
    first = np.ones(flat.size, dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (flat[1:] != flat[:-1])
    group = np.cumsum(first) - 1  # (T',) distinct (user, item) index
    weight = np.exp(-float(decay) * age) if decay else np.ones(flat.size)
    count = np.bincount(group, weights=weight, minlength=int(first.sum())).astype(np.float64)  # (H,)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[first], minlength=batch))]).astype(np.int64)
    return HistoryFeatures(indptr, flat[first], count, age[first])


def history_item_scores(queries: np.ndarray, item_embeddings: np.ndarray, feats: HistoryFeatures,
                        chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Best score ``max_k <q_uk, e_i>`` of every history item and the interest attaining it: (H,), (H,)."""
    q = np.asarray(queries, dtype=np.float32)  # (B, K, D)
    if q.ndim == 2:
        q = q[:, None, :]
    e = np.asarray(item_embeddings, dtype=np.float32)  # (N + 1, D)
    rows = feats.rows  # (H,)
    scores = np.empty(rows.size, dtype=np.float32)
    interest = np.empty(rows.size, dtype=np.int64)
    for s in range(0, rows.size, chunk):
        qq = q[rows[s:s + chunk]]  # (h, K, D)
        ee = e[feats.items[s:s + chunk]]  # (h, D)
        sc = np.einsum("hkd,hd->hk", qq, ee)  # (h, K)
        interest[s:s + chunk] = sc.argmax(axis=1)
        scores[s:s + chunk] = sc.max(axis=1)
    return scores, interest


def _top_per_row(rows: np.ndarray, batch: int, n: int, ids: np.ndarray, scores: np.ndarray,
                 interest: np.ndarray) -> SearchResult:
    """Scatter candidates already sorted by (row, rank order) into (B, n) arrays, first n per row."""
    out = SearchResult(ids=np.full((batch, n), -1, dtype=np.int64),
                       scores=np.full((batch, n), -np.inf, dtype=np.float32),
                       interest=np.full((batch, n), -1, dtype=np.int64))
    starts = np.searchsorted(rows, np.arange(batch))  # (B,)
    rank = np.arange(rows.size) - starts[rows]  # (C,)
    sel = rank < n
    r, c = rows[sel], rank[sel]
    out.ids[r, c] = ids[sel]
    out.scores[r, c] = scores[sel]
    out.interest[r, c] = interest[sel]
    return out


def _in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found mask, position in sorted_keys) of each key."""
    if sorted_keys.size == 0:
        return np.zeros(keys.size, dtype=bool), np.zeros(keys.size, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[pos] == keys, pos


def repeat_first(feats: HistoryFeatures, fill: SearchResult, n: int) -> SearchResult:
    """History items by count desc, age asc, id asc, then ``fill`` in its order minus history items.

    History items carry their (decayed) count as score and interest 0; fill items keep theirs.
    """
    batch = fill.ids.shape[0]
    h_rows, base = feats.rows, int(max(feats.items.max(initial=0), fill.ids.max(initial=0))) + 1
    hkeys = h_rows * base + feats.items  # (H,) sorted (features are grouped by user, ids ascending)
    f_rows, f_cols = np.nonzero(fill.ids > 0)  # (F,) each
    f_ids = fill.ids[f_rows, f_cols]
    dup, _ = _in_sorted(f_rows * base + f_ids, hkeys)  # a fill item already in the history
    f_rows, f_cols, f_ids = f_rows[~dup], f_cols[~dup], f_ids[~dup]
    rows = np.concatenate([h_rows, f_rows])
    group = np.concatenate([np.zeros(h_rows.size), np.ones(f_rows.size)])
    key1 = np.concatenate([-feats.count, f_cols.astype(np.float64)])  # count desc | fill order
    key2 = np.concatenate([feats.age, np.zeros(f_rows.size, np.int64)])  # recency
    key3 = np.concatenate([feats.items, np.zeros(f_rows.size, np.int64)])  # lower id
    order = np.lexsort((key3, key2, key1, group, rows))
    ids = np.concatenate([feats.items, f_ids])[order]
    scores = np.concatenate([feats.count.astype(np.float32), fill.scores[f_rows, f_cols]])[order]
    interest = np.concatenate([np.zeros(h_rows.size, np.int64), fill.interest[f_rows, f_cols]])[order]
    return _top_per_row(rows[order], batch, n, ids, scores, interest)


def repeat_score(feats: HistoryFeatures, channel: RepeatChannel) -> np.ndarray:
    """(H,) the channel's repeat score ``log(1 + c) + recency / (1 + a) - bias`` of each history item."""
    return np.log1p(feats.count) + channel.recency / (1.0 + feats.age) - channel.bias


def _lookup(keys: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found mask, index into ``table``) of each key; the index is meaningless where not found."""
    order = np.argsort(table, kind="stable")
    found, pos = _in_sorted(keys, table[order])
    return found, (order[pos] if order.size else pos)


def _flat(res: SearchResult) -> tuple[np.ndarray, ...]:
    """The valid entries of a result, row-major: rows, columns, ids, scores (float64), interests."""
    rows, cols = np.nonzero(res.ids > 0)
    return rows, cols, res.ids[rows, cols], res.scores[rows, cols].astype(np.float64), res.interest[rows, cols]


def merge_channel(base: SearchResult, fill: SearchResult, feats: HistoryFeatures, hist_scores: np.ndarray,
                  hist_interest: np.ndarray, channel: RepeatChannel, n: int) -> SearchResult:
    """Merge the model's lists with the history items (see the module docstring).

    ``base`` (B, M), M >= n: the model's top M (its order breaks ties; its scores give the spread).
    ``fill`` (B, >= n): the model's top items with the history excluded, so that history items
    pushed down (a negative repeat score) make room for the next new items. The candidates are
    ``base`` and ``fill`` and every history item: the top n by merged score is then exact.
    """
    batch, width = base.ids.shape
    n_valid = (base.ids > 0).sum(axis=1)  # (B,)
    sc = base.scores.astype(np.float64)  # (B, M)
    last_ref = np.clip(np.minimum(channel.ref_rank, n_valid) - 1, 0, None)  # (B,)
    spread = sc[:, 0] - sc[np.arange(batch), last_ref]  # (B,)
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    floor = sc[np.arange(batch), np.clip(n_valid - 1, 0, None)]  # (B,) the model list's last score
    floor = np.where(n_valid > 0, floor, np.inf)  # items outside the list never score above it

    b_rows, b_cols, b_ids, b_sc, b_int = _flat(base)
    f_rows, f_cols, f_ids, f_sc, f_int = _flat(fill)
    h_rows = feats.rows  # (H,)
    key = int(max(feats.items.max(initial=0), b_ids.max(initial=0), f_ids.max(initial=0))) + 1
    b_keys, f_keys, h_keys = b_rows * key + b_ids, f_rows * key + f_ids, h_rows * key + feats.items

    h_in_base, hb = _lookup(h_keys, b_keys)  # (H,) each
    s = np.where(h_in_base, b_sc[hb] if b_sc.size else 0.0,
                 np.minimum(hist_scores.astype(np.float64), floor[h_rows]))  # (H,)
    k = np.where(h_in_base, b_int[hb] if b_int.size else 0, hist_interest)  # (H,)
    tie_h = np.where(h_in_base, b_cols[hb] if b_cols.size else 0, 2 * width)  # (H,) the model's order
    m = s + channel.weight * repeat_score(feats, channel) * spread[h_rows]  # (H,)

    keep_b = ~_lookup(b_keys, h_keys)[0]  # base items that are not history items
    keep_f = ~(_lookup(f_keys, b_keys)[0] | _lookup(f_keys, h_keys)[0])  # new fill items only
    rows = np.concatenate([b_rows[keep_b], f_rows[keep_f], h_rows])
    ids = np.concatenate([b_ids[keep_b], f_ids[keep_f], feats.items])
    merged = np.concatenate([b_sc[keep_b], np.minimum(f_sc, floor[f_rows])[keep_f], m])
    ties = np.concatenate([b_cols[keep_b], width + f_cols[keep_f], tie_h])
    interest = np.concatenate([b_int[keep_b], f_int[keep_f], k])
    order = np.lexsort((ids, ties, -merged, rows))
    return _top_per_row(rows[order], batch, n, ids[order], merged[order].astype(np.float32), interest[order])


SearchFn = Callable[[np.ndarray, int, Any], SearchResult]


def retrieve(search: SearchFn, queries: np.ndarray, histories: Sequence[np.ndarray], n: int, *,
             exclude_history: bool = False, stage: Stage = None,
             item_embeddings: np.ndarray | None = None) -> SearchResult:
    """Top n per user: ``search(queries, m, exclude)`` then the repeat ``stage`` (None: plain search).

    ``histories`` are each user's whole known history, oldest first (what exclusion and the
    repeat features use); ``item_embeddings`` (N + 1, D) are needed by the channel.
    """
    n = int(n)
    if stage is None:
        return search(queries, n, histories if exclude_history else None)
    if isinstance(stage, RepeatFirst):
        fill = search(queries, n, histories)  # the fill never repeats a history item
        if exclude_history:
            return fill
        return repeat_first(history_features(histories, stage.decay), fill, n)
    if not isinstance(stage, RepeatChannel):
        raise TypeError(f"unknown repeat stage {stage!r}")
    if exclude_history:  # no history item may be returned: the channel has nothing to add
        return search(queries, n, histories)
    if item_embeddings is None:
        raise ValueError("the repeat channel needs the item embeddings")
    base = search(queries, max(n, stage.ref_rank), None)
    fill = search(queries, n, histories)
    feats = history_features(histories, stage.decay)
    hs, hk = history_item_scores(queries, item_embeddings, feats)
    return merge_channel(base, fill, feats, hs, hk, stage, n)
