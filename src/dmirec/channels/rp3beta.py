"""RP3beta: three-step random-walk item similarity with a popularity penalty (top-k sparse).

On the bipartite user-item graph of the training matrix X (binary), a walk from item i goes to a
user u who has it with probability ``x_ui / d_i`` (d_i: users of item i), then to an item j of u
with probability ``x_uj / d_u`` (d_u: items of user u). RP3beta raises both transition
probabilities to the power ``alpha`` and divides by the target's popularity to the power
``beta``::

    sim(i, j) = sum_u (x_ui / d_i)^alpha * (x_uj / d_u)^alpha / d_j^beta      i != j

then keeps the top-k j per item i (ties: lower j first). Row/column 0 are empty. With
``beta = 0`` and ``alpha = 1`` this is the plain 3-step walk (P3alpha); larger ``beta`` demotes
popular items. The computation is the blockwise sparse product of :mod:`.itemknn`, with the same
memory bound and block-independence.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .itemknn import clean_train, topk_product

__all__ = ["fit_rp3beta"]


def fit_rp3beta(train, *, alpha: float = 1.0, beta: float = 0.5, topk: int = 200,
                block: int = 4096) -> sp.csr_matrix:
    """RP3beta item-item matrix: CSR (N + 1, N + 1) float32, row i = item i's top-k targets."""
    alpha, beta = float(alpha), float(beta)
    if not (alpha > 0 and np.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    if not (beta >= 0 and np.isfinite(beta)):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    x = clean_train(train)  # (U, N + 1)
    x.data[:] = 1.0  # the walk is on the binary graph
    d_item = np.asarray(x.sum(axis=0)).ravel()  # (N + 1,)
    d_user = np.asarray(x.sum(axis=1)).ravel()  # (U,)
    inv_item = np.divide(1.0, d_item, out=np.zeros_like(d_item), where=d_item > 0)  # (N + 1,)
    inv_user = np.divide(1.0, d_user, out=np.zeros_like(d_user), where=d_user > 0)  # (U,)
    to_user = sp.csr_matrix(x.multiply(inv_item[None, :]))  # (U, N + 1) x_ui / d_i
    to_item = sp.csr_matrix(x.multiply(inv_user[:, None]))  # (U, N + 1) x_uj / d_u
    if alpha != 1.0:
        to_user.data **= alpha
        to_item.data **= alpha
    penalty = np.power(d_item, -beta, out=np.zeros_like(d_item), where=d_item > 0)  # (N + 1,)

    def walk(rows: np.ndarray, cols: np.ndarray, prob: np.ndarray) -> np.ndarray:
        return prob * penalty[cols]

    return topk_product(to_user.T.tocsr(), to_item, walk, topk, block)
