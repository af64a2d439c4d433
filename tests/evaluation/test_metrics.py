"""Metrics against hand-worked examples and a slow pure-Python reference.

Discounts used below: 1/log2(2) = 1, 1/log2(3) = 0.6309298, 1/log2(4) = 0.5, 1/log2(5) = 0.4306766.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmirec.evaluation.metrics import (
    hit_matrix,
    hitrate_at,
    ndcg_at,
    ndcg_comirec_at,
    recall_at,
    summarize,
    mrr_at,
    catalogue_coverage,
    per_user,
)

D2, D3, D4, D5 = 1.0, 1 / math.log2(3), 0.5, 1 / math.log2(5)


def one(fn, recs, targets, n):
    out = fn(np.array([recs]), [np.array(targets)], n)
    assert out.shape == (1,) and out.dtype == np.float64
    return float(out[0])


def test_repeated_targets_recall_counts_repeats():
    # targets [5, 5, 7] (3 with repeats, 2 distinct), recs [5, 9, 7]:
    #   hits at ranks 1 and 3 -> recall = 2 distinct hits / 3 targets = 2/3
    #   DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5
    #   standard IDCG = min(2 distinct, 3) hits = 1 + 0.6309 = 1.6309 -> 0.91972
    #   ComiRec IDCG = 2 hits = 1.6309 -> the same 0.91972
    recs, tg = [5, 9, 7], [5, 5, 7]
    assert hit_matrix(np.array([recs]), [np.array(tg)]).tolist() == [[True, False, True]]
    assert one(recall_at, recs, tg, 3) == pytest.approx(2 / 3)
    assert one(hitrate_at, recs, tg, 3) == 1.0
    assert one(ndcg_at, recs, tg, 3) == pytest.approx(1.5 / (D2 + D3))
    assert one(ndcg_comirec_at, recs, tg, 3) == pytest.approx(1.5 / (D2 + D3))
    assert one(ndcg_at, recs, tg, 3) == pytest.approx(0.919720, abs=1e-6)


def test_ranks_and_comirec_variant_differ():
    # targets [3, 4, 5, 6] (4 distinct), recs [9, 3, 8], n = 3:
    #   one hit at rank 2 -> DCG = 1/log2(3) = 0.6309; recall = 1/4
    #   standard IDCG = min(4, 3) = 3 hits = 1 + 0.6309 + 0.5 = 2.1309 -> 0.29608
    #   ComiRec IDCG = 1 hit = 1 -> 0.6309
    recs, tg = [9, 3, 8], [3, 4, 5, 6]
    assert one(recall_at, recs, tg, 3) == pytest.approx(0.25)
    assert one(ndcg_at, recs, tg, 3) == pytest.approx(D3 / (D2 + D3 + D4))
    assert one(ndcg_at, recs, tg, 3) == pytest.approx(0.296082, abs=1e-6)
    assert one(ndcg_comirec_at, recs, tg, 3) == pytest.approx(D3)


def test_idcg_with_fewer_distinct_targets_than_n():
    # targets [1, 1, 1] (1 distinct), recs [1, 2, 3], n = 3:
    #   recall = 1 distinct hit / 3 targets = 1/3 (a perfect list scores below 1 under ComiRec)
    #   DCG = 1; standard IDCG = min(1, 3) = 1 hit = 1 -> NDCG 1.0 (not 1 / (1 + .63 + .5))
    recs, tg = [1, 2, 3], [1, 1, 1]
    assert one(recall_at, recs, tg, 3) == pytest.approx(1 / 3)
    assert one(ndcg_at, recs, tg, 3) == pytest.approx(1.0)
    assert one(ndcg_comirec_at, recs, tg, 3) == pytest.approx(1.0)
    # targets [2, 8] (2 distinct), recs [1, 2, 3, 4], n = 4: hit at rank 2
    #   DCG = 0.6309; IDCG = min(2, 4) = 2 hits = 1.6309 -> 0.38685; ComiRec: 0.6309 / 1
    assert one(ndcg_at, [1, 2, 3, 4], [2, 8], 4) == pytest.approx(D3 / (D2 + D3))
    assert one(ndcg_comirec_at, [1, 2, 3, 4], [2, 8], 4) == pytest.approx(D3)


def test_duplicates_in_recs_count_once():
    # recs [7, 7, 8], targets [7, 7, 8]: the second 7 is not a hit
    #   hits [T, F, T] -> recall = 2 / 3 (not 3/3), DCG = 1 + 0.5 = 1.5
    #   standard IDCG = min(2 distinct, 3) = 1.6309 -> 0.91972
    recs, tg = [7, 7, 8], [7, 7, 8]
    assert hit_matrix(np.array([recs]), [np.array(tg)]).tolist() == [[True, False, True]]
    assert one(recall_at, recs, tg, 3) == pytest.approx(2 / 3)
    assert one(ndcg_at, recs, tg, 3) == pytest.approx(1.5 / (D2 + D3))
    # A duplicate before the first occurrence of another id does not shift ranks:
    # recs [4, 4, 6], targets [6]: hit at rank 3 -> DCG = 0.5, IDCG 1 -> 0.5
    assert one(ndcg_at, [4, 4, 6], [6], 3) == pytest.approx(D4)


def test_minus_one_never_hits():
    # -1 is "no item": recs [-1, 2, -1] with target [2] -> only rank 2 hits
    assert hit_matrix(np.array([[-1, 2, -1]]), [np.array([2])]).tolist() == [[False, True, False]]
    assert one(ndcg_at, [-1, 2, -1], [2], 3) == pytest.approx(D3)
    # a row of padding alone scores 0 everywhere
    for fn in (recall_at, hitrate_at, ndcg_at, ndcg_comirec_at):
        assert one(fn, [-1, -1], [0], 2) == 0.0


def test_n_smaller_than_width():
    # recs [1, 2, 3, 4], target [4]: nothing in the first 2; at n = 4 a hit at rank 4
    #   DCG = 1/log2(5) = 0.4307, IDCG = min(1, 4) = 1 hit = 1 -> 0.4307
    recs, tg = [1, 2, 3, 4], [4]
    for fn in (recall_at, hitrate_at, ndcg_at, ndcg_comirec_at):
        assert one(fn, recs, tg, 2) == 0.0
    assert one(recall_at, recs, tg, 4) == 1.0
    assert one(ndcg_at, recs, tg, 4) == pytest.approx(D5)
    assert one(ndcg_comirec_at, recs, tg, 4) == pytest.approx(D5)
    with pytest.raises(ValueError):
        recall_at(np.array([recs]), [np.array(tg)], 5)
    with pytest.raises(ValueError):
        recall_at(np.array([recs]), [np.array(tg)], 0)


def test_batch_rows_are_independent():
    # Same item ids in different users must not leak across rows.
    recs = np.array([[1, 2], [3, 4], [2, 1]])
    targets = [np.array([2]), np.array([1, 2]), np.array([9])]
    assert hit_matrix(recs, targets).tolist() == [[False, True], [False, False], [False, False]]
    np.testing.assert_allclose(recall_at(recs, targets, 2), [1.0, 0.0, 0.0])


def test_empty_targets_name_the_row():
    with pytest.raises(ValueError, match="user row 1"):
        recall_at(np.array([[1], [2]]), [np.array([1]), np.array([], dtype=np.int64)], 1)
    with pytest.raises(ValueError, match="3 rows but targets has 2"):
        recall_at(np.array([[1], [2], [3]]), [[1], [2]], 1)
    with pytest.raises(TypeError):
        recall_at(np.array([[1.5]]), [[1]], 1)


def test_summarize_keys_and_means():
    # user 0: targets [5, 5, 7], recs [5, 9, 7, -1...]  (first example above)
    # user 1: targets [1],       recs [2, ... , 1 at rank 30, -1...]
    #   recall@20 = 0, recall@50 = 1; DCG@50 = 1/log2(31) = 0.2018; standard IDCG = 1 hit = 1
    #   and ComiRec IDCG = 1 hit = 1, so both NDCG@50 = 0.2018 (rank matters in both)
    recs = np.full((2, 50), -1, dtype=np.int64)
    recs[0, :3] = [5, 9, 7]
    recs[1, 0] = 2
    recs[1, 29] = 1
    s = summarize(recs, [[5, 5, 7], [1]])
    assert set(s) == {
        "recall@20", "recall@50", "hitrate@20", "hitrate@50",
        "ndcg@20", "ndcg@50", "ndcg_comirec@20", "ndcg_comirec@50", "mrr@20", "mrr@50", "users",
    }  # fmt: skip
    assert s["users"] == 2 and isinstance(s["users"], int)
    assert all(isinstance(v, float) for k, v in s.items() if k != "users")
    assert s["recall@20"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["recall@50"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["hitrate@20"] == pytest.approx(0.5)
    assert s["hitrate@50"] == pytest.approx(1.0)
    assert s["ndcg@50"] == pytest.approx((1.5 / (D2 + D3) + 1 / math.log2(31)) / 2)
    assert s["ndcg_comirec@20"] == pytest.approx((1.5 / (D2 + D3) + 0) / 2)
    assert s["ndcg_comirec@50"] == pytest.approx((1.5 / (D2 + D3) + 1 / math.log2(31)) / 2)
    assert s["mrr@20"] == pytest.approx((1 + 0) / 2)  # user 0 hits at rank 1, user 1 not in the top 20
    assert s["mrr@50"] == pytest.approx((1 + 1 / 30) / 2)


# --- property test against a slow reference -------------------------------------------------


def reference(recs_row, targets, n):
    """Literal pure-Python reading of the definitions in dmirec.evaluation.metrics."""
    tset, seen, hits = set(targets), set(), []
    for r in list(recs_row)[:n]:
        hits.append(r >= 0 and r in tset and r not in seen)
        seen.add(r)
    disc = [1 / math.log2(j + 2) for j in range(n)]
    dcg = sum(d for d, h in zip(disc, hits) if h)
    nh = sum(hits)
    idcg = sum(disc[: min(len(tset), n)])
    idcg_c = sum(disc[:nh])
    return {
        "hits": hits,
        "recall": nh / len(targets),
        "hitrate": float(nh > 0),
        "ndcg": dcg / idcg,
        "ndcg_comirec": dcg / idcg_c if nh else 0.0,
    }


@st.composite
def batches(draw):
    b = draw(st.integers(1, 6))
    width = draw(st.integers(1, 8))
    row = st.lists(st.integers(-3, 10), min_size=width, max_size=width)  # negative = no item
    recs = draw(st.lists(row, min_size=b, max_size=b))
    tgt = st.lists(st.integers(0, 10), min_size=1, max_size=6)
    targets = draw(st.lists(tgt, min_size=b, max_size=b))
    n = draw(st.integers(1, width))
    return np.array(recs, dtype=np.int64), [np.array(t) for t in targets], n


@settings(max_examples=200, deadline=None)
@given(batches())
def test_matches_slow_reference(case):
    recs, targets, n = case
    refs = [reference(r, t, n) for r, t in zip(recs.tolist(), [t.tolist() for t in targets])]
    hm = hit_matrix(recs, targets)[:, :n]
    assert hm.tolist() == [r["hits"] for r in refs]
    for name, fn in (
        ("recall", recall_at),
        ("hitrate", hitrate_at),
        ("ndcg", ndcg_at),
        ("ndcg_comirec", ndcg_comirec_at),
    ):
        np.testing.assert_allclose(fn(recs, targets, n), [r[name] for r in refs], rtol=1e-12)
        assert np.all((fn(recs, targets, n) >= 0) & (fn(recs, targets, n) <= 1 + 1e-12))
    s = summarize(recs, targets, ns=(n,))
    assert s[f"recall@{n}"] == pytest.approx(np.mean([r["recall"] for r in refs]))


def test_mrr_first_hit_only_and_duplicates():
    recs = np.array([[9, 3, 3, 4], [9, 9, 8, 7], [-1, -1, -1, -1]])
    # user 0: first hit at rank 2; user 1: no hit; user 2: nothing recommended
    assert mrr_at(recs, [[3, 4], [1], [2]], 4).tolist() == pytest.approx([0.5, 0.0, 0.0])
    assert mrr_at(recs, [[4], [7], [2]], 3).tolist() == pytest.approx([0.0, 0.0, 0.0])
    assert mrr_at(recs, [[4], [7], [2]], 4).tolist() == pytest.approx([0.25, 0.25, 0.0])


def test_catalogue_coverage_counts_distinct_real_items():
    recs = np.array([[1, 2, 3], [2, 1, -1], [5, 5, 4]])
    assert catalogue_coverage(recs, 10, 2) == pytest.approx(3 / 10)  # {1, 2, 5}
    assert catalogue_coverage(recs, 10, 3) == pytest.approx(5 / 10)  # {1, 2, 3, 4, 5}
    with pytest.raises(ValueError):
        catalogue_coverage(recs, 10, 4)


def test_per_user_means_are_summarize():
    rng = np.random.default_rng(0)
    recs = rng.integers(1, 30, size=(40, 20))
    targets = [rng.integers(1, 30, size=rng.integers(1, 5)) for _ in range(40)]
    pu = per_user(recs, targets, (5, 20))
    s = summarize(recs, targets, (5, 20))
    assert set(pu) == set(s) - {"users"}
    for k, v in pu.items():
        assert v.shape == (40,) and v.mean() == pytest.approx(s[k])
