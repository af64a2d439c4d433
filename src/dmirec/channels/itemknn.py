"""Item kNN: cosine similarity between item columns with shrinkage, top-k neighbours per item.

For the training matrix X (users x items, column i = the users of item i)::

    sim(i, j) = <x_i, x_j> / (||x_i|| * ||x_j|| + shrink)      for i != j, 0 on the diagonal

and row i of the result keeps only the ``topk`` largest sim(i, j) over j (ties: lower j first),
so a user's score for item j, ``sum_i w_i sim[i, j]`` over their history items i, sums the
similarities of j to those history items that have j among their neighbours. Row and column 0
(padding) are empty; only positive similarities are stored.

The computation (:func:`topk_product`) never forms the dense N x N matrix: item rows are taken
``block`` at a time, their co-occurrences with every item are one sparse product (at most
``block * (N + 1)`` entries, far fewer on sparse logs), scored, cut to the top k per row, and
only the kept ``(N + 1) * topk`` entries accumulate. Each entry is computed from the same
sums in the same order whatever the block size, so any ``block`` gives the identical matrix.
scipy's sparse product runs on one thread; there is no thread setting.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

__all__ = ["fit_itemknn", "topk_product", "clean_train", "rows_topk"]

#: finish(rows, cols, products) -> scores, all (nnz,) arrays; rows/cols are global item ids.
Finish = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def clean_train(train, name: str = "train") -> sp.csr_matrix:
    """The training matrix as float64 CSR with column 0 (padding) emptied; checks its shape."""
    if not sp.issparse(train) or train.ndim != 2:
        raise ValueError(f"{name} must be a 2-D scipy sparse matrix (users x (N + 1) items)")
    if train.shape[1] < 1:
        raise ValueError(f"{name} must have at least the padding column, got shape {train.shape}")
    x = sp.csr_matrix(train, dtype=np.float64, copy=True)
    x.sum_duplicates()
    x.data[x.indices == 0] = 0.0
    x.eliminate_zeros()
    if x.nnz and not np.all(np.isfinite(x.data)):
        raise ValueError(f"{name} holds a non-finite value")
    return x


def rows_topk(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, k: int
              ) -> np.ndarray:
    """Indices of the entries that are among the k best of their row: higher value, then lower col.

    Returned in (row, -value, col) order. rows/cols/vals: (nnz,) arrays of one sparse block.
    """
    order = np.lexsort((cols, -vals, rows))  # (nnz,) row-major, best first within a row
    srt = rows[order]
    first = np.searchsorted(srt, srt, side="left")  # (nnz,) where each entry's row starts
    rank = np.arange(len(order)) - first  # (nnz,) 0-based rank within its row
    return order[rank < k]


def topk_product(left_t: sp.csr_matrix, right: sp.csr_matrix, finish: Finish, topk: int,
                 block: int) -> sp.csr_matrix:
    """CSR (N + 1, N + 1) float32: the top-k positive off-diagonal ``finish(left_t @ right)`` per row.

    ``left_t``: (N + 1, U) CSR, ``right``: (U, N + 1) CSR. Rows are computed ``block`` at a time.
    """
    topk, block = int(topk), int(block)
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    n1 = right.shape[1]
    counts = np.zeros(n1, dtype=np.int64)  # kept entries per row
    col_parts, val_parts = [], []
    for s in range(0, n1, block):
        t = min(n1, s + block)
        prod = left_t[s:t] @ right  # (b, N + 1) sparse co-occurrences
        prod = sp.csr_matrix(prod)
        rows = np.repeat(np.arange(s, t, dtype=np.int64), np.diff(prod.indptr))  # (nnz,)
        cols = prod.indices.astype(np.int64)  # (nnz,)
        vals = finish(rows, cols, prod.data)  # (nnz,) float64
        ok = (cols != rows) & (vals > 0)
        rows, cols, vals = rows[ok], cols[ok], vals[ok]
        keep = rows_topk(rows, cols, vals, topk)
        keep = keep[np.lexsort((cols[keep], rows[keep]))]  # canonical CSR order: (row, col)
        counts[s:t] = np.bincount(rows[keep] - s, minlength=t - s)
        col_parts.append(cols[keep].astype(np.int32))
        val_parts.append(vals[keep].astype(np.float32))
        del prod, rows, cols, vals, ok, keep
    indptr = np.concatenate([[0], np.cumsum(counts)])  # (N + 2,)
    indices = np.concatenate(col_parts) if col_parts else np.zeros(0, dtype=np.int32)
    data = np.concatenate(val_parts) if val_parts else np.zeros(0, dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(n1, n1))


def fit_itemknn(train, *, shrink: float = 0.0, topk: int = 200, block: int = 4096) -> sp.csr_matrix:
    """Cosine item kNN with shrinkage: CSR (N + 1, N + 1) float32, row i = item i's top-k neighbours.

    ``train``: (U, N + 1) sparse users x items (binary or weighted; column 0 ignored).
    """
    shrink = float(shrink)
    if shrink < 0 or not np.isfinite(shrink):
        raise ValueError(f"shrink must be a finite number >= 0, got {shrink}")
    x = clean_train(train)  # (U, N + 1)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())  # (N + 1,) column norms

    def cosine(rows: np.ndarray, cols: np.ndarray, dots: np.ndarray) -> np.ndarray:
        return dots / (norms[rows] * norms[cols] + shrink)

    return topk_product(x.T.tocsr(), x, cosine, topk, block)
