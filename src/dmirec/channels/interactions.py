"""User x item matrices from item-id histories and from a prepared dataset's splits.

Column ``i`` is item id ``i``; column 0 is the padding item and is always empty. A history is a
1-D int array of ids in time order (most recent last); ids 0 are padding and ignored, repeats
are allowed. With ``decay = 0`` every distinct item of a history weighs 1; with ``decay > 0``
an item weighs ``sum over its occurrences of exp(-decay * age)``, where age 0 is the last
position of the history, 1 the one before, and so on (padding positions count as positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from dmirec.data.dataset import PreparedData, Sequences

__all__ = ["user_item_matrix", "sequences_matrix", "train_matrix"]


def _check_ids(items: np.ndarray, num_items: int, where: str) -> None:
    if items.size and (items.min() < 0 or items.max() > num_items):
        bad = int(items.min()) if items.min() < 0 else int(items.max())
        raise ValueError(f"{where}: item id {bad} is outside 0..{num_items}")


def _from_flat(rows: np.ndarray, items: np.ndarray, age: np.ndarray, batch: int, num_items: int,
               decay: float) -> sp.csr_matrix:
    """CSR (batch, N + 1) from flat (row, item, age) triples; item 0 dropped, duplicates summed."""
    if decay < 0 or not np.isfinite(decay):
        raise ValueError(f"decay must be a finite number >= 0, got {decay}")
    keep = items > 0
    rows, items, age = rows[keep], items[keep], age[keep]
    weight = np.ones(len(items), dtype=np.float64) if decay == 0 else np.exp(-decay * age)  # (M,)
    mat = sp.csr_matrix((weight, (rows, items)), shape=(batch, num_items + 1), dtype=np.float64)
    mat.sum_duplicates()  # canonical: sorted column ids, one entry per (user, item)
    if decay == 0:
        mat.data[:] = 1.0
    return mat.astype(np.float32)


def user_item_matrix(histories: Sequence[np.ndarray], num_items: int, *, decay: float = 0.0
                     ) -> sp.csr_matrix:
    """(B, N + 1) float32 CSR: row b weighs the distinct items of ``histories[b]`` (see module doc)."""
    batch = len(histories)
    parts = [np.asarray(h, dtype=np.int64).ravel() for h in histories]
    lengths = np.fromiter((p.size for p in parts), dtype=np.int64, count=batch)  # (B,)
    items = np.concatenate(parts) if batch else np.zeros(0, dtype=np.int64)  # (M,)
    _check_ids(items, num_items, "histories")
    offsets = np.concatenate([[0], np.cumsum(lengths)])  # (B + 1,)
    rows = np.repeat(np.arange(batch, dtype=np.int64), lengths)  # (M,)
    age = offsets[rows + 1] - 1 - np.arange(len(items))  # (M,) 0 = most recent position
    return _from_flat(rows, items, age.astype(np.float64), batch, num_items, float(decay))


def sequences_matrix(seqs: Sequences, num_items: int, *, decay: float = 0.0) -> sp.csr_matrix:
    """(U, N + 1) float32 CSR of every sequence of a split, one row per sequence, as above."""
    items = np.asarray(seqs.items, dtype=np.int64)  # (M,)
    _check_ids(items, num_items, "sequences")
    offsets = np.asarray(seqs.offsets, dtype=np.int64)  # (U + 1,)
    rows = np.repeat(np.arange(seqs.num_users, dtype=np.int64), np.diff(offsets))  # (M,)
    age = offsets[rows + 1] - 1 - np.arange(len(items))  # (M,)
    return _from_flat(rows, items, age.astype(np.float64), seqs.num_users, num_items, float(decay))


def train_matrix(data: PreparedData, split: str = "train") -> sp.csr_matrix:
    """Binary (U, N + 1) float32 CSR of a prepared dataset's split (default: the training users)."""
    if split not in data.splits:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(data.splits)}")
    return sequences_matrix(data.splits[split], data.num_items)
