"""Retrieval backends: parity (torch exact vs faiss), the K * n merge, exclusion, padding."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from dmirec.retrieval import (
    resolve_backend,
    ExactTorchSearch,
    ExcludeCSR,
    FaissSearch,
    SearchResult,
    make_searcher,
    merge_candidates,
    search,
)
from dmirec.retrieval.exact import brute_force_scores

ATOL = 1e-5
BACKENDS = ("torch", "faiss")


# --- data -----------------------------------------------------------------------------------


def random_case(seed=0, b=64, k=4, d=16, n_items=5000):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((b, k, d)) / np.sqrt(d)).astype(np.float32)  # (B, K, D)
    e = rng.standard_normal((n_items + 1, d)).astype(np.float32)  # (N + 1, D)
    return q, e


def clustered_case(seed=1, b=64, k=4, d=16, n_items=5000, clusters=12):
    """Items around a few centroids, queries near centroids: many close scores."""
    rng = np.random.default_rng(seed)
    cent = rng.standard_normal((clusters, d))  # (C, D)
    e = cent[rng.integers(0, clusters, n_items + 1)] + 0.05 * rng.standard_normal((n_items + 1, d))
    q = cent[rng.integers(0, clusters, (b, k))] + 0.05 * rng.standard_normal((b, k, d))
    return (q / np.sqrt(d)).astype(np.float32), e.astype(np.float32)


# --- references and the parity helper ---------------------------------------------------------


def reference_topn(q, e, n, exclude=None):
    """Brute force: score every item for every interest, max over K, sort (score desc, id asc)."""
    sc, it = brute_force_scores(q, e)  # (B, N + 1) float64
    if exclude is not None:
        for b, ex in enumerate(exclude):
            sc[b, [i for i in ex if i > 0]] = -np.inf
    ids = np.arange(sc.shape[1])
    out_ids = np.full((sc.shape[0], n), -1)
    out_sc = np.full((sc.shape[0], n), -np.inf)
    for b in range(sc.shape[0]):
        order = np.lexsort((ids, -sc[b]))
        order = order[np.isfinite(sc[b, order])][:n]
        out_ids[b, : order.size] = order
        out_sc[b, : order.size] = sc[b, order]
    return out_ids, out_sc, sc, it


def protocol_topn(q, e, n):
    """The serving protocol taken literally: per-interest top n, concat K*n, dedup best, cut."""
    qd, ed = np.asarray(q, np.float64), np.asarray(e, np.float64)
    b_, k_ = qd.shape[:2]
    out = []
    for b in range(b_):
        best = {}
        for k in range(k_):
            s = ed[1:] @ qd[b, k]  # (N,)
            for pos in np.argsort(-s, kind="stable")[:n]:
                item, score = int(pos) + 1, float(s[pos])
                if item not in best or score > best[item]:
                    best[item] = score
        ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        out.append([i for i, _ in ranked] + [-1] * (n - len(ranked)))
    return np.array(out)


def assert_same_topn(a: SearchResult, b: SearchResult, true_scores: np.ndarray, atol=ATOL):
    """Two top-n results agree up to float rounding and ties.

    ``true_scores`` (B, N + 1): the exact per-item score (excluded items at -inf). Checks: equal
    padding, scores within atol, every returned score is the item's true score, no duplicates,
    ids differ only where scores tie, and an item in one list but not the other is no better
    than the other list's cut-off (a tie at position n).
    """
    assert a.ids.shape == b.ids.shape == a.scores.shape == b.scores.shape
    np.testing.assert_array_equal(a.ids < 0, b.ids < 0)
    np.testing.assert_array_equal(np.isneginf(a.scores), a.ids < 0)
    np.testing.assert_allclose(a.scores, b.scores, atol=atol, rtol=0)
    for r in (a, b):
        valid = r.ids >= 0
        assert not np.any(r.ids == 0), "padding row returned"
        rows = np.nonzero(valid)[0]
        np.testing.assert_allclose(r.scores[valid], true_scores[rows, r.ids[valid]], atol=atol)
        assert np.all(np.diff(np.where(valid, r.scores, -np.inf), axis=1) <= atol), "not sorted"
    for row in range(a.ids.shape[0]):
        ia, ib = a.ids[row][a.ids[row] >= 0], b.ids[row][b.ids[row] >= 0]
        assert len(set(ia)) == ia.size and len(set(ib)) == ib.size, "duplicate ids"
        cut_a, cut_b = (r.scores[row][r.ids[row] >= 0].min(initial=np.inf) for r in (a, b))
        for item in set(ia) - set(ib):
            assert true_scores[row, item] <= cut_b + atol, f"row {row}: {item} missing from b"
        for item in set(ib) - set(ia):
            assert true_scores[row, item] <= cut_a + atol, f"row {row}: {item} missing from a"


def check_interest(res: SearchResult, q, e, atol=ATOL):
    """The interest reported for each item attains that item's max score."""
    qd, ed = np.asarray(q, np.float64), np.asarray(e, np.float64)
    rows, cols = np.nonzero(res.ids >= 0)
    ids, its = res.ids[rows, cols], res.interest[rows, cols]
    assert np.all((its >= 0) & (its < qd.shape[1]))
    via = np.einsum("md,md->m", qd[rows, its], ed[ids])  # score through the reported interest
    best = np.einsum("mkd,md->mk", qd[rows], ed[ids]).max(axis=1)  # max over interests
    np.testing.assert_allclose(via, best, atol=atol)
    np.testing.assert_allclose(via, res.scores[rows, cols], atol=atol)
    assert np.all(res.interest[res.ids < 0] == -1)


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [random_case, clustered_case], ids=["random", "clustered"])
def test_backend_parity_and_reference(case):
    q, e = case()
    n = 50
    ref_ids, _, true, _ = reference_topn(q, e, n)
    res = {bk: search(q, e, n, backend=bk) for bk in BACKENDS}
    for bk, r in res.items():
        assert r.ids.dtype == np.int64 and r.scores.dtype == np.float32
        assert r.interest.dtype == np.int64 and r.ids.shape == (64, n)
        check_interest(r, q, e)
        # merge equals the brute-force reference (ids exact except among ties)
        ref_sc = true[np.arange(64)[:, None], ref_ids].astype(np.float32)
        ref = SearchResult(ref_ids, ref_sc, r.interest)
        assert_same_topn(r, ref, true)
    assert_same_topn(res["torch"], res["faiss"], true)
    # on random data ties are (almost surely) absent: identical ids
    if case is random_case:
        np.testing.assert_array_equal(res["torch"].ids, res["faiss"].ids)
        np.testing.assert_array_equal(res["torch"].interest, res["faiss"].interest)


def test_protocol_equals_max_over_interests():
    q, e = random_case(seed=3, b=8, k=3, d=8, n_items=300)
    n = 20
    lit = protocol_topn(q, e, n)
    for bk in BACKENDS:
        np.testing.assert_array_equal(search(q, e, n, backend=bk).ids, lit)


def test_ties_from_duplicate_vectors():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((250, 8)).astype(np.float32)
    e = np.concatenate([np.zeros((1, 8), np.float32), base, base, base])  # each vector 3 times
    q = rng.standard_normal((16, 2, 8)).astype(np.float32)
    n = 10  # cuts through a triple of tied items in most rows
    _, _, true, _ = reference_topn(q, e, n)
    r_t, r_f = (search(q, e, n, backend=bk) for bk in BACKENDS)
    assert_same_topn(r_t, r_f, true)
    # the helper treats the tied copies as interchangeable ...
    swapped = r_t.ids.copy()
    copy_of = lambda i: (i - 1 + 250) % 750 + 1  # noqa: E731 - the next copy of the same vector
    for row in range(swapped.shape[0]):
        swapped[row] = [copy_of(i) if copy_of(i) not in r_t.ids[row] else i for i in r_t.ids[row]]
    assert not np.array_equal(swapped, r_t.ids)
    assert_same_topn(r_t, SearchResult(swapped, r_t.scores, r_t.interest), true)
    # ... but rejects a genuinely worse item
    bad = r_t.ids.copy()
    worst = np.argmin(np.where(np.isfinite(true[0]), true[0], np.inf))
    bad[0, 0] = worst
    with pytest.raises(AssertionError):
        assert_same_topn(r_t, SearchResult(bad, r_t.scores, r_t.interest), true)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_row_never_returned(backend):
    q, e = random_case(seed=2, b=8, n_items=200)
    e[0] = 1e3 * q[:, 0].mean(axis=0)  # row 0 would win every list if it were searched
    r = search(q, e, 200, backend=backend)  # n = N: every real item returned
    assert not np.any(r.ids == 0)
    assert np.all(np.sort(r.ids, axis=1) == np.arange(1, 201))


@pytest.mark.parametrize("backend", BACKENDS)
def test_exclusion_removes_exactly_the_excluded(backend):
    q, e = random_case(seed=4, b=32, n_items=1000)
    rng = np.random.default_rng(4)
    n = 30
    full = search(q, e, n, backend="torch")
    exclude = []
    for b in range(32):
        ex = list(rng.choice(full.ids[b], size=rng.integers(0, 20), replace=False))  # top items
        ex += list(rng.integers(0, 1001, size=5))  # random ones, padding 0 included
        ex += ex[:2]  # repeats
        exclude.append(ex)
    exclude[3] = []
    r = search(q, e, n, backend=backend, exclude=exclude)
    for b in range(32):
        assert not set(r.ids[b]) & set(exclude[b]), f"row {b} returns an excluded item"
    # exactly: the result is the top n of the remaining items
    ref_ids, ref_sc, true, _ = reference_topn(q, e, n, exclude)
    assert_same_topn(r, SearchResult(ref_ids, ref_sc.astype(np.float32), r.interest), true)
    np.testing.assert_array_equal(r.ids[3], full.ids[3])
    # CSR input is the same as lists
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in exclude])])
    csr = ExcludeCSR(indptr=indptr, indices=np.concatenate([np.asarray(x, int) for x in exclude]))
    r2 = search(q, e, n, backend=backend, exclude=csr)
    np.testing.assert_array_equal(r.ids, r2.ids)
    check_interest(r, q, e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fewer_items_than_n_pads(backend):
    q, e = random_case(seed=6, b=5, k=2, d=4, n_items=3)
    r = search(q, e, 10, backend=backend)
    assert r.ids.shape == (5, 10)
    assert np.all(np.sort(r.ids[:, :3], axis=1) == [1, 2, 3])
    assert np.all(r.ids[:, 3:] == -1) and np.all(np.isneginf(r.scores[:, 3:]))
    assert np.all(r.interest[:, 3:] == -1)
    # exclusion can leave even fewer
    r = search(q, e, 10, backend=backend, exclude=[[1, 2, 3], [1], [], [2, 2], [0]])
    assert np.all(r.ids[0] == -1)
    assert (r.ids[1] >= 0).sum() == 2 and (r.ids[3] >= 0).sum() == 2 and (r.ids[4] >= 0).sum() == 3
    with pytest.raises(ValueError):
        search(q, e, 3, backend=backend, exclude=[[4]] * 5)  # id beyond the catalogue


def test_memory_bounded_path_matches_one_chunk():
    q, e = clustered_case(seed=7, b=20, n_items=1500)
    exclude = [list(range(1, 1 + 2 * b)) for b in range(20)]
    _, _, true, _ = reference_topn(q, e, 25, exclude)
    big = ExactTorchSearch(e, user_chunk=10_000, item_block=10**6).search(q, 25, exclude)
    # 7 chunks of users x 94 blocks of items; blocks smaller than n = 25 stress the running top-n
    tiny = ExactTorchSearch(e, user_chunk=3, item_block=16).search(q, 25, exclude)
    auto = ExactTorchSearch(e, user_chunk=7, max_block_elems=2000).search(q, 25, exclude)  # 71
    for r in (tiny, auto):
        assert_same_topn(big, r, true)
    np.testing.assert_array_equal(big.ids, tiny.ids)
    small_f = FaissSearch(e, user_chunk=3).search(q, 25, exclude)
    assert_same_topn(big, small_f, true)


def test_interfaces_and_prebuilt_index():
    q, e = random_case(seed=8, b=6, k=2, d=8, n_items=400)
    # tensors in, K = 1 from (B, D), searcher reuse
    s = make_searcher(torch.from_numpy(e), "torch")
    r_t = s.search(torch.from_numpy(q), 5)
    r_np = search(q, e, 5)
    np.testing.assert_array_equal(r_t.ids, r_np.ids)
    r1 = search(q[:, 0], e, 5, backend="faiss")
    assert np.all(r1.interest == 0)
    np.testing.assert_array_equal(r1.ids, search(q[:, :1], e, 5).ids)
    with pytest.raises(ValueError, match="unknown retrieval backend"):
        make_searcher(e, "annoy")
    # a prebuilt exact inner-product index (faiss id = item id - 1) gives the same result
    idx = faiss.IndexFlatIP(8)
    idx.add(e[1:])
    np.testing.assert_array_equal(search(q, e, 5, backend="faiss", index=idx).ids, r_np.ids)
    # an HNSW index with a generous efSearch finds (nearly) the same items
    hnsw = faiss.IndexHNSWFlat(8, 16, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(e[1:])
    hnsw.hnsw.efSearch = 128
    r_h = FaissSearch(e, hnsw).search(q, 5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(r_h.ids, r_np.ids)]) >= 0.9
    with pytest.raises(ValueError, match="inner-product"):
        l2 = faiss.IndexFlatL2(8)
        l2.add(e[1:])
        FaissSearch(e, l2)
    with pytest.raises(ValueError, match="padding row"):
        FaissSearch(e, idx.__class__(8))


def test_merge_candidates_dedups_keeping_best():
    ids = np.array([[3, 5, 3, 0, -1, 7]])
    sc = np.array([[1.0, 2.0, 4.0, 9.0, 8.0, 2.0]], np.float32)
    it = np.array([[0, 0, 1, 1, 1, 2]])
    r = merge_candidates(ids, sc, it, 4, ExcludeCSR(np.array([0, 1]), np.array([7])))
    # 3 keeps its best score 4.0 from interest 1; 0 and -1 are no items; 7 is excluded
    assert r.ids.tolist() == [[3, 5, -1, -1]]
    assert r.scores[0, :2].tolist() == [4.0, 2.0]
    assert r.interest.tolist() == [[1, 0, -1, -1]]


def test_auto_backend_is_faiss_on_cpu_and_torch_on_cuda():
    """``auto`` (the default) names the faster exact search where it runs, and gives the same lists."""
    assert resolve_backend("auto", "cpu") == "faiss" and resolve_backend("auto", None) == "faiss"
    assert resolve_backend("auto", "cuda") == "torch" and resolve_backend("auto", torch.device("cuda", 0)) == "torch"
    assert resolve_backend("torch", "cpu") == "torch" and resolve_backend("faiss", "cuda") == "faiss"
    rng = np.random.default_rng(5)
    items = rng.standard_normal((301, 8)).astype(np.float32)
    queries = rng.standard_normal((7, 3, 8)).astype(np.float32)
    assert isinstance(make_searcher(items), FaissSearch)
    assert isinstance(make_searcher(torch.from_numpy(items)), FaissSearch)  # a CPU tensor: faiss too
    auto, exact = search(queries, items, 20), search(queries, items, 20, backend="torch")
    np.testing.assert_array_equal(auto.ids, exact.ids)
    np.testing.assert_allclose(auto.scores, exact.scores, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown retrieval backend"):
        make_searcher(items, "annoy")


@pytest.mark.parametrize("block", [1, 7, 300, None])
def test_torch_search_blocks_agree_with_brute_force(block):
    """The per-interest, per-block top-n of the torch search: every item block size gives the
    brute-force max-over-interests ranking, scores and the interest that attains it."""
    rng = np.random.default_rng(11)
    items = rng.standard_normal((300, 6)).astype(np.float32)
    queries = rng.standard_normal((9, 4, 6)).astype(np.float32)
    res = ExactTorchSearch(items, item_block=block, user_chunk=4).search(queries, 25)
    scores, interest = brute_force_scores(queries, items)  # (B, N + 1) each
    for b in range(len(queries)):
        order = np.lexsort((np.arange(len(items)), -scores[b]))[:25]  # best first, lower id on ties
        np.testing.assert_array_equal(res.ids[b], order)
        np.testing.assert_allclose(res.scores[b], scores[b][order], rtol=1e-5)
        np.testing.assert_array_equal(res.interest[b], interest[b][order])
