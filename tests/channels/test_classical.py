"""The classical item-to-item channels (dmirec.channels) on hand-worked and random small matrices.

The hand example: 5 users x 4 items (column 0 is padding)::

    user 0: 1 2      user 1: 1 2 3      user 2: 2 3      user 3: 3 4      user 4: 1 4

Item counts 3, 3, 3, 2; co-occurrences (1,2)=2, (1,3)=1, (1,4)=1, (2,3)=2, (2,4)=0, (3,4)=1, so
the cosines are 2/3, 1/3, 1/sqrt(6), 2/3, 0, 1/sqrt(6).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from dmirec.channels.ease import fit_ease
from dmirec.channels.interactions import sequences_matrix, train_matrix, user_item_matrix
from dmirec.channels.itemknn import fit_itemknn
from dmirec.channels.rp3beta import fit_rp3beta
from dmirec.channels.scoring import fill_popular, top_items
from dmirec.data.dataset import PreparedData, Sequences

HISTORIES = [[1, 2], [1, 2, 3], [2, 3], [3, 4], [1, 4]]
R6 = 1 / math.sqrt(6)


def hand_x() -> sp.csr_matrix:
    return user_item_matrix([np.array(h) for h in HISTORIES], 4)


def random_x(users: int = 60, items: int = 25, density: float = 0.15, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items + 1)) < density).astype(np.float32)  # (U, N + 1)
    dense[:, 0] = 0
    return sp.csr_matrix(dense)


def dense_cosine(x: np.ndarray, shrink: float) -> np.ndarray:
    """Independent dense formula: <x_i, x_j> / (|x_i| |x_j| + shrink), zero diagonal."""
    x = x.astype(np.float64).copy()
    x[:, 0] = 0
    dots = x.T @ x  # (N + 1, N + 1)
    norm = np.sqrt((x * x).sum(axis=0))  # (N + 1,)
    denom = np.outer(norm, norm) + shrink
    sim = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    np.fill_diagonal(sim, 0)
    return sim


# ---------------------------------------------------------------- interactions


def test_user_item_matrix_binary_ignores_padding_and_repeats():
    m = user_item_matrix([np.array([3, 0, 3, 1]), np.array([], dtype=int), np.array([0, 0])], 4)
    assert m.shape == (3, 5) and m.dtype == np.float32
    assert m.toarray().tolist() == [[0, 1, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]


def test_user_item_matrix_decay_sums_occurrences_by_age():
    # positions 0..3 have ages 3, 2, 1, 0; the padding position still counts as a position
    m = user_item_matrix([np.array([3, 1, 0, 1])], 4, decay=0.5).toarray()  # (1, 5)
    assert m[0, 1] == pytest.approx(math.exp(-1.0) + 1.0, rel=1e-6)
    assert m[0, 3] == pytest.approx(math.exp(-1.5), rel=1e-6)
    assert m[0, 0] == 0 and m[0, 2] == 0 and m[0, 4] == 0


def test_user_item_matrix_rejects_bad_ids_and_decay():
    with pytest.raises(ValueError, match="item id 5 is outside 0..4"):
        user_item_matrix([np.array([1, 5])], 4)
    with pytest.raises(ValueError, match="item id -1"):
        user_item_matrix([np.array([-1])], 4)
    with pytest.raises(ValueError, match="decay"):
        user_item_matrix([np.array([1])], 4, decay=-1.0)


def test_train_matrix_reads_the_train_split():
    items = np.array([1, 2, 2, 3, 4], dtype=np.int32)
    seqs = Sequences(offsets=np.array([0, 3, 5]), items=items, users=np.array([0, 1]),
                     timestamps=np.zeros(5, dtype=np.int64))
    data = PreparedData(path=Path("."), meta={"name": "t", "num_items": 4},
                        splits={"train": seqs, "valid": seqs, "test": seqs}, item_ids=list("abcd"))
    m = train_matrix(data)
    assert m.toarray().tolist() == [[0, 1, 1, 0, 0], [0, 0, 0, 1, 1]]
    assert (sequences_matrix(seqs, 4) != m).nnz == 0
    with pytest.raises(ValueError, match="unknown split"):
        train_matrix(data, "nope")


# ---------------------------------------------------------------- ItemKNN


def test_itemknn_hand_worked_cosines():
    s = fit_itemknn(hand_x(), topk=10).toarray()  # (5, 5)
    expected = np.array([
        [0, 0, 0, 0, 0],
        [0, 0, 2 / 3, 1 / 3, R6],
        [0, 2 / 3, 0, 2 / 3, 0],
        [0, 1 / 3, 2 / 3, 0, R6],
        [0, R6, 0, R6, 0],
    ])
    np.testing.assert_allclose(s, expected, rtol=1e-6, atol=0)


def test_itemknn_shrink():
    s = fit_itemknn(hand_x(), shrink=1.0, topk=10).toarray()
    assert s[1, 2] == pytest.approx(2 / (3 + 1), rel=1e-6)
    assert s[1, 4] == pytest.approx(1 / (math.sqrt(6) + 1), rel=1e-6)


def test_itemknn_topk_keeps_best_and_breaks_ties_by_lower_id():
    s = fit_itemknn(hand_x(), topk=1)
    assert s.nnz == 4
    best = {i: (s.indices[s.indptr[i]:s.indptr[i + 1]].tolist()) for i in range(1, 5)}
    # item 2: items 1 and 3 tie at 2/3 -> 1; item 4: items 1 and 3 tie at 1/sqrt(6) -> 1
    assert best == {1: [2], 2: [1], 3: [2], 4: [1]}
    assert s.indptr[1] == 0  # row 0 empty


def test_itemknn_random_matches_dense_formula_and_truncation():
    x = random_x()
    ref = dense_cosine(x.toarray(), shrink=3.0)  # (26, 26)
    full = fit_itemknn(x, shrink=3.0, topk=1000).toarray()
    np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-7)
    k = 4
    cut = fit_itemknn(x, shrink=3.0, topk=k)
    for i in range(1, 26):
        cols = cut.indices[cut.indptr[i]:cut.indptr[i + 1]]
        order = np.lexsort((np.arange(26), -ref[i]))  # best first, lower id among ties
        want = [j for j in order if ref[i, j] > 0][:k]
        assert sorted(cols.tolist()) == sorted(want)
    assert cut.getnnz(axis=1).max() <= k
    assert cut[:, 0].nnz == 0 and cut[0].nnz == 0


def test_itemknn_blockwise_equals_one_block():
    x = random_x(users=80, items=40, seed=3)
    one = fit_itemknn(x, shrink=2.0, topk=5, block=10_000)
    for block in (1, 7, 16):
        part = fit_itemknn(x, shrink=2.0, topk=5, block=block)
        assert np.array_equal(part.indptr, one.indptr)
        assert np.array_equal(part.indices, one.indices)
        assert np.array_equal(part.data, one.data)


def test_itemknn_rejects_bad_settings():
    with pytest.raises(ValueError, match="shrink"):
        fit_itemknn(hand_x(), shrink=-1)
    with pytest.raises(ValueError, match="topk"):
        fit_itemknn(hand_x(), topk=0)
    with pytest.raises(ValueError, match="sparse"):
        fit_itemknn(np.ones((2, 3)))


# ---------------------------------------------------------------- EASE


def dense_ease(x: np.ndarray, lam: float) -> np.ndarray:
    """Independent dense formula on items 1..N: B = I - P / diag(P), P = (X^T X + lam I)^-1."""
    x = x[:, 1:].astype(np.float64)
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    out = np.zeros((x.shape[1] + 1,) * 2)
    out[1:, 1:] = b
    return out


def test_ease_hand_example_matches_dense_formula():
    b = fit_ease(hand_x(), lam=1.0)
    assert isinstance(b, np.ndarray) and b.shape == (5, 5) and b.dtype == np.float32
    np.testing.assert_allclose(b, dense_ease(hand_x().toarray(), 1.0), atol=1e-6)
    assert np.all(np.diag(b) == 0) and not b[0].any() and not b[:, 0].any()


def test_ease_hand_example_closed_form_value():
    # item 4 has users 3 and 4; with a large lam, B[i, j] -> G[i, j] / (G[j, j] + lam) to first
    # order; check B[1, 4] against that and the sign of the never-co-occurring pair (2, 4)
    b = fit_ease(hand_x(), lam=1e4)
    assert b[1, 4] == pytest.approx(1 / (2 + 1e4), rel=1e-3)
    assert b[2, 4] < 0  # items 2 and 4 never co-occur; 2's co-occurrence with 1 and 3 argues against 4


def test_ease_random_matches_dense_formula_and_topk_columns():
    x = random_x(users=70, items=30, seed=5)
    ref = dense_ease(x.toarray(), 5.0)
    b = fit_ease(x, lam=5.0)
    np.testing.assert_allclose(b, ref, atol=2e-6)
    k = 3
    cut = fit_ease(x, lam=5.0, topk=k)
    assert sp.issparse(cut) and cut.shape == (31, 31)
    cut = cut.toarray()
    for j in range(1, 31):
        col = np.abs(ref[:, j])
        order = np.lexsort((np.arange(31), -col))
        want = sorted(i for i in order[:k] if col[i] > 0)
        assert sorted(np.flatnonzero(cut[:, j]).tolist()) == want
        np.testing.assert_allclose(cut[want, j], ref[want, j], atol=2e-6)


def test_ease_oversize_error_names_items_memory_and_setting():
    x = random_x(users=10, items=12)
    with pytest.raises(ValueError) as err:
        fit_ease(x, max_items=10)
    msg = str(err.value)
    assert "12 items" in msg and "GiB" in msg and "max_items=10" in msg
    with pytest.raises(ValueError) as err:
        fit_ease(sp.csr_matrix((1, 200_001), dtype=np.float32))
    assert "200000 items" in str(err.value) and "298.0 GiB" in str(err.value)


# ---------------------------------------------------------------- RP3beta


def test_rp3beta_matches_dense_walk():
    x = hand_x().toarray().astype(np.float64)  # (5, 5)
    d_item = x.sum(axis=0)
    d_user = x.sum(axis=1)
    to_user = np.divide(x, d_item[None, :], out=np.zeros_like(x), where=d_item[None, :] > 0)
    to_item = x / d_user[:, None]
    alpha, beta = 0.8, 0.4
    walk = (to_user ** alpha).T @ (to_item ** alpha)  # (5, 5)
    pen = np.divide(1.0, d_item ** beta, out=np.zeros_like(d_item), where=d_item > 0)
    ref = walk * pen[None, :]
    np.fill_diagonal(ref, 0)
    got = fit_rp3beta(hand_x(), alpha=alpha, beta=beta, topk=10).toarray()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    # hand value: item 1 -> user 0 (1/3) -> item 2 (1/2), user 1 (1/3) -> item 2 (1/3): beta = 0, alpha = 1
    plain = fit_rp3beta(hand_x(), alpha=1.0, beta=0.0, topk=10).toarray()
    assert plain[1, 2] == pytest.approx(1 / 3 * 1 / 2 + 1 / 3 * 1 / 3, rel=1e-6)


# ---------------------------------------------------------------- scoring


def test_top_items_scores_order_exclusion_and_padding():
    sim = fit_itemknn(hand_x(), topk=10)
    rows = user_item_matrix([np.array([1]), np.array([4])], 4)
    ids, sc = top_items(rows, sim, 3)
    assert ids.tolist() == [[2, 4, 3], [1, 3, -1]]  # user 1: 1 and 3 tie at 1/sqrt(6): lower id first
    np.testing.assert_allclose(sc[0], [2 / 3, R6, 1 / 3], rtol=1e-6)
    assert sc[1, 2] == -np.inf
    ids, sc = top_items(rows, sim, 5, exclude=[[2], None])
    assert ids.tolist() == [[4, 3, -1, -1, -1], [1, 3, -1, -1, -1]]
    assert np.all(np.isneginf(sc[:, 2:]))
    # a CSR exclusion (the user rows themselves) removes history items: item 1 is not in row 0's list anyway
    ids2, _ = top_items(rows, sim, 5, exclude=rows)
    assert ids2.tolist() == [[2, 4, 3, -1, -1], [1, 3, -1, -1, -1]]


def test_top_items_never_returns_padding_even_if_sim_scores_it():
    sim = np.full((5, 5), 0.1, dtype=np.float32)
    sim[:, 0] = 100.0
    sim[1, 3] = 0.5
    rows = user_item_matrix([np.array([1])], 4)
    for s in (sim, sp.csr_matrix(sim)):
        ids, sc = top_items(rows, s, 4)
        assert ids.tolist() == [[3, 1, 2, 4]]
        assert 0 not in ids


def test_top_items_dense_sparse_and_blocks_agree():
    x = random_x(users=50, items=30, seed=9)
    hist = user_item_matrix([np.flatnonzero(r) for r in random_x(users=23, items=30, seed=10).toarray()], 30)
    knn = fit_itemknn(x, topk=6)
    ref_ids, ref_sc = top_items(hist, knn, 10, block=10_000)
    for block in (1, 4):
        ids, sc = top_items(hist, knn, 10, block=block)
        assert np.array_equal(ids, ref_ids) and np.array_equal(sc, ref_sc)
        ids, sc = top_items(hist, knn.toarray(), 10, block=block)
        assert np.array_equal(ids, ref_ids)
        np.testing.assert_allclose(sc, ref_sc, rtol=1e-6)
    # independent check: dense scores, positive only, sorted by (-score, id)
    dense = (hist.toarray().astype(np.float64) @ knn.toarray())  # (23, 31)
    for b in range(23):
        order = [j for j in np.lexsort((np.arange(31), -dense[b])) if dense[b, j] > 1e-9 and j > 0][:10]
        assert ref_ids[b, :len(order)].tolist() == order
        assert np.all(ref_ids[b, len(order):] == -1)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), decay=st.sampled_from([0.0, 0.1, 0.7]), n=st.integers(1, 40),
       signed=st.booleans(), exclude=st.booleans(), f64=st.booleans(),
       shape=st.sampled_from([(30, 0.3), (3000, 0.3)]))
def test_one_user_path_gives_the_batch_paths_floats(seed, decay, n, signed, exclude, f64, shape):
    """A single history (a served request) takes the gather path (a dense accumulator when its rows
    hold many entries for the catalogue, the distinct columns otherwise: both shapes drawn); its ids
    and scores must be the very floats of the scipy product the batch path (evaluation) computes."""
    rng = np.random.default_rng(seed)
    items, density = shape
    values = (lambda k: rng.normal(size=k)) if signed else (lambda k: rng.random(k))
    # entries only in the first 40 columns: with 3,000 items the rows hold few entries for the
    # catalogue (the distinct-columns path) yet many land on one column (sums of several terms)
    width = min(40, items + 1)
    block = sp.random(items + 1, width, density=density, random_state=rng, data_rvs=values)
    sim = sp.hstack([block, sp.csr_matrix((items + 1, items + 1 - width))]).tocsr()
    sim = sim.astype(np.float64 if f64 else np.float32)
    hist = rng.integers(0, items + 1, size=rng.integers(1, 25))
    other = rng.integers(1, items + 1, size=5)  # a second user: the batch path
    rows = user_item_matrix([hist, other], items, decay=decay)  # (2, N + 1)
    excl = [list(rng.choice(np.arange(1, items + 1), 4, replace=False)), []] if exclude else None
    batch_ids, batch_sc = top_items(rows, sim, n, exclude=excl)
    one_ids, one_sc = top_items(rows[:1], sim, n, exclude=excl[:1] if excl else None)
    assert np.array_equal(one_ids[0], batch_ids[0])
    assert np.array_equal(one_sc[0], batch_sc[0])


def test_top_items_dense_ease_excludes_negative_and_history():
    b = fit_ease(hand_x(), lam=1.0)
    rows = user_item_matrix([np.array([1, 2])], 4)
    ids, sc = top_items(rows, b, 4, exclude=[[1, 2]])
    dense = rows.toarray() @ b  # (1, 5)
    want = [j for j in (3, 4) if dense[0, j] > 0]
    want.sort(key=lambda j: (-dense[0, j], j))
    assert ids[0, :len(want)].tolist() == want and np.all(ids[0, len(want):] == -1)


def test_top_items_rejects_bad_input():
    rows = user_item_matrix([np.array([1])], 4)
    with pytest.raises(ValueError, match="shape"):
        top_items(rows, np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match="n must be"):
        top_items(rows, np.zeros((5, 5)), 0)
    with pytest.raises(ValueError, match="catalogue has 4 items"):
        top_items(rows, np.zeros((5, 5)), 2, exclude=[[7]])


def test_fill_popular_fills_holes_skipping_held_and_excluded():
    ids = np.array([[3, -1, -1], [1, 2, 4], [-1, -1, -1]])
    pop = np.array([100, 5, 9, 9, 1])  # item 0 ignored; 2 and 3 tie -> 2 first
    out = fill_popular(ids, pop)
    assert out.tolist() == [[3, 2, 1], [1, 2, 4], [2, 3, 1]]
    out = fill_popular(ids, pop, exclude=[[2], None, [2, 3, 1]])
    assert out.tolist() == [[3, 1, 4], [1, 2, 4], [4, -1, -1]]


# ---------------------------------------------------------------- benchmark selection rule


def test_bench_selection_rule_prefers_earliest_within_tie():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_classical.py"
    spec = importlib.util.spec_from_file_location("bench_classical", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def entry(order, recall):
        return {"order": order, "valid": {"recall@50": recall}}

    a, b, c = entry((1, 0, 0), 0.20005), entry((0, 1, 3), 0.2), entry((0, 0, 5), 0.19996)
    assert bench.choose([a, b, c]) is c  # all within 1e-4 of the best: the earliest order wins
    d = entry((0, 0, 6), 0.19)
    assert bench.choose([a, d]) is a  # outside the tie band: the best wins
    e = entry((0, 0, 5), 0.1999)
    assert bench.choose([a, b, e]) is b  # e is 1.5e-4 below the best: not tied
    grid = bench.fit_grid("itemknn")
    assert grid[0] == {"shrink": 0.0, "topk": 50} and grid[-1] == {"shrink": 200.0, "topk": 200}
    with pytest.raises(ValueError, match="unknown method"):
        bench.fit_grid("nope")


def test_one_user_path_breaks_ties_by_lower_id_at_the_cut():
    """Five items tie at the n-th place: the single-history path keeps the lower ids, as the batch path."""
    sim = sp.csr_matrix(np.array([[0, 0, 0, 0, 0, 0, 0],
                                  [0, 0, 0.5, 0.5, 0.5, 0.5, 0.9],
                                  [0, 0, 0, 0, 0, 0, 0],
                                  [0, 0, 0, 0, 0, 0, 0],
                                  [0, 0, 0, 0, 0, 0, 0],
                                  [0, 0, 0, 0, 0, 0, 0],
                                  [0, 0, 0, 0, 0, 0, 0]], dtype=np.float32))
    rows = user_item_matrix([np.array([1])], 6)
    ids, sc = top_items(rows, sim, 3)
    assert ids.tolist() == [[6, 2, 3]] and sc.tolist() == [[np.float32(0.9), 0.5, 0.5]]
    batch, _ = top_items(sp.vstack([rows, rows]).tocsr(), sim, 3)
    assert batch[0].tolist() == ids[0].tolist()
