"""EASE (Steck, 2019): the closed-form item-item ridge regression with a zero diagonal.

EASE predicts each item column of the training matrix X (users x items, binary) from the other
columns with an L2 penalty ``lam`` and the constraint that no item predicts itself. The solution
has a closed form: with ``P = (X^T X + lam I)^-1``::

    B[i, j] = -P[i, j] / P[j, j]      for i != j,      B[j, j] = 0

and a user's score for item j is ``sum_i w_i B[i, j]`` over their history items i. B is dense and
may hold negative weights (an item can argue against another).

Cost: X^T X and its inverse are dense N x N float32 matrices (the inverse is computed in place
with a Cholesky factorisation, so about ``4 N^2`` bytes, plus the float32 result, ``4 N^2``), and
O(N^3) time. Single precision is enough: on beauty (12k items, lam 200) the float32 inverse
differs from the float64 one by 7e-7 of its largest entry, and it takes half the time.
Above ``max_items`` items :func:`fit_ease` refuses with the memory it would need.

``topk`` keeps, for each target item j, the ``topk`` entries of column j with the largest
absolute value (ties: lower source id first) and returns a sparse matrix, so that the model
can be stored and served like the kNN channels; docs/classical.md has the recall it costs.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from .itemknn import clean_train, rows_topk

__all__ = ["fit_ease", "column_topk", "ease_memory_gib"]


def ease_memory_gib(num_items: int) -> float:
    """GiB of the dense float32 N x N inverse plus the float32 (N + 1)^2 result."""
    return (4.0 * num_items**2 + 4.0 * (num_items + 1) ** 2) / 2**30


def _symmetrize_upper(a: np.ndarray, block: int = 2048) -> None:
    """Copy the upper triangle of square ``a`` onto its lower triangle, in place, block by block."""
    n = a.shape[0]
    for s in range(0, n, block):
        t = min(n, s + block)
        diag = a[s:t, s:t]
        diag[...] = np.triu(diag) + np.triu(diag, 1).T
        if t < n:
            a[t:, s:t] = a[s:t, t:].T


def _inverse_spd(g: np.ndarray) -> np.ndarray:
    """Inverse of the symmetric positive definite ``g`` (float32, C order), overwriting it."""
    a = g.T  # F-ordered view of the same (symmetric) memory: LAPACK works in place
    c, info = lapack.spotrf(a, lower=0, clean=0, overwrite_a=1)
    if info != 0:
        raise ValueError(f"EASE: X^T X + lam I is not positive definite (LAPACK potrf info={info}); "
                         "use a larger lam")
    inv, info = lapack.spotri(c, lower=0, overwrite_c=1)
    if info != 0:
        raise ValueError(f"EASE: the inverse failed (LAPACK potri info={info}); use a larger lam")
    _symmetrize_upper(inv)
    return inv


def column_topk(b: np.ndarray, k: int, block: int = 1024) -> sp.csr_matrix:
    """CSR of the k largest-|value| entries of each column of dense ``b`` (ties: lower row first).

    ``fit_ease(..., topk=k)`` is ``column_topk(fit_ease(...), k)``; call this directly to try
    several k on one dense fit."""
    n1 = b.shape[0]
    rows_out, cols_out, vals_out = [], [], []
    for s in range(0, n1, block):
        t = min(n1, s + block)
        cols_t = np.ascontiguousarray(b[:, s:t].T)  # (b, N + 1): row c = column s + c of b
        mag = np.abs(cols_t)  # (b, N + 1)
        if k < n1:
            thr = -np.partition(-mag, k - 1, axis=1)[:, k - 1]  # (b,) k-th largest magnitude
            cand = (mag >= thr[:, None]) & (mag > 0)  # (b, N + 1) the top k plus ties
        else:
            cand = mag > 0
        r, c = np.nonzero(cand)  # r: column of b (local), c: row of b
        keep = rows_topk(r, c, mag[r, c], k)
        rows_out.append(c[keep])
        cols_out.append(r[keep] + s)
        vals_out.append(cols_t[r[keep], c[keep]])
    rows = np.concatenate(rows_out)
    cols = np.concatenate(cols_out)
    vals = np.concatenate(vals_out).astype(np.float32)
    out = sp.csr_matrix((vals, (rows, cols)), shape=(n1, n1))
    out.sort_indices()
    return out


def fit_ease(train, *, lam: float = 200.0, max_items: int = 50_000, topk: int | None = None
             ) -> np.ndarray | sp.csr_matrix:
    """EASE item-item weights B, (N + 1, N + 1) float32 (dense; CSR when ``topk`` is set).

    ``train``: (U, N + 1) sparse users x items (column 0 ignored). Row/column 0 of B are zero.
    """
    lam = float(lam)
    if not (lam > 0 and np.isfinite(lam)):
        raise ValueError(f"lam must be a finite number > 0, got {lam}")
    if topk is not None and int(topk) < 1:
        raise ValueError(f"topk must be >= 1 or None, got {topk}")
    x = clean_train(train)[:, 1:]  # (U, N) without the padding column
    n = x.shape[1]
    if n > max_items:
        raise ValueError(
            f"EASE on {n} items needs a dense {n} x {n} inverse, about {ease_memory_gib(n):.1f} GiB; "
            f"the limit is max_items={max_items}: raise max_items if the machine has that memory, "
            "or use ItemKNN / RP3beta")
    g = (x.T @ x).astype(np.float32).toarray()  # (N, N) Gram matrix (counts: exact in float32)
    g[np.diag_indices(n)] += lam
    p = _inverse_spd(g)  # (N, N), overwrites g
    d = np.diag(p).copy()  # (N,)
    p /= -d[None, :]  # B[i, j] = -P[i, j] / P[j, j]
    p[np.diag_indices(n)] = 0.0
    full = np.zeros((n + 1, n + 1), dtype=np.float32)  # (N + 1, N + 1)
    full[1:, 1:] = p
    del p, g
    if topk is None:
        return full
    return column_topk(full, int(topk))
