"""The merger of channel lists (dmirec.recipes.merge) and the popular fill, against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from dmirec.recipes.fit import weight_grid
from dmirec.recipes.merge import candidate_table, merge
from dmirec.retrieval import SearchResult
from dmirec.retrieval.fill import fill_popular


def res(ids, scores) -> SearchResult:
    ids = np.asarray(ids, dtype=np.int64)
    return SearchResult(ids=ids, scores=np.asarray(scores, dtype=np.float32), interest=np.zeros_like(ids))


A = res([[3, 1, 2, -1], [5, 6, 7, 8]], [[0.9, 0.5, 0.1, -np.inf], [4.0, 3.0, 2.0, 1.0]])
B = res([[2, 4, 5], [9, 5, 1]], [[5.0, 4.0, 3.0], [1.0, 0.5, 0.25]])


@pytest.mark.parametrize("merger", ["rrf", "score"])
def test_one_hot_weights_give_that_channel(merger):
    a = merge([A, B], [1.0, 0.0], 4, merger)
    np.testing.assert_array_equal(a.ids, A.ids)
    b = merge([A, B], [0.0, 3.0], 3, merger)
    np.testing.assert_array_equal(b.ids, B.ids)
    assert (b.interest[b.ids > 0] == 1).all()  # the channel that ranked the item


def test_rrf_by_hand():
    # user 0, k = 1: item 2 gets 1/(1+3) + 1/(1+1) = 0.75; 3: 1/2; 1: 1/3; 4: 1/3; 5: 1/4
    out = merge([A, B], [1.0, 1.0], 5, "rrf", k=1.0)
    np.testing.assert_array_equal(out.ids[0], [2, 3, 1, 4, 5])  # 1 and 4 tie at 1/3: the lower id first
    np.testing.assert_allclose(out.scores[0], [0.75, 0.5, 1 / 3, 1 / 3, 0.25], rtol=1e-6)
    # weights scale each channel's share: channel B twice as heavy
    out = merge([A, B], [1.0, 2.0], 3, "rrf", k=1.0)
    np.testing.assert_allclose(out.scores[0], [1 / 4 + 2 * 1 / 2, 2 * 1 / 3, 1 / 2], rtol=1e-6)  # 2, 4, 3
    np.testing.assert_array_equal(out.ids[0], [2, 4, 3])


def test_score_fusion_by_hand():
    # user 0: A's min-max over (0.9, 0.5, 0.1) -> 1, 0.5, 0; B's over (5, 4, 3) -> 1, 0.5, 0
    out = merge([A, B], [1.0, 1.0], 5, "score")
    # 2: 0 + 1 = 1; 3: 1; 1: 0.5; 4: 0.5; 5: 0 -> ties to the lower id
    np.testing.assert_array_equal(out.ids[0], [2, 3, 1, 4, 5])
    np.testing.assert_allclose(out.scores[0], [1.0, 1.0, 0.5, 0.5, 0.0])


def test_zero_weight_channel_adds_no_item_and_short_lists_pad():
    out = merge([A, B], [1.0, 0.0], 6, "rrf")
    assert out.ids[0].tolist() == [3, 1, 2, -1, -1, -1]
    assert np.isneginf(out.scores[0, 3:]).all() and (out.interest[0, 3:] == -1).all()


def test_repeated_id_in_a_list_counts_at_its_best_rank():
    dup = res([[7, 7, 8]], [[3.0, 2.0, 1.0]])
    table = candidate_table([dup])
    assert table.ids[0].tolist() == [7, 8]
    assert table.rank[0, :, 0].tolist() == [1, 3]


def test_merge_refuses_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        merge([A, B], [0.0, 0.0], 3)
    with pytest.raises(ValueError, match="2 channels but 1 weights"):
        merge([A, B], [1.0], 3)
    with pytest.raises(ValueError, match="unknown merger"):
        merge([A, B], [1.0, 1.0], 3, "borda")


def test_fill_popular_fills_without_repeats_or_excluded_items():
    short = res([[3, -1, -1, -1], [-1, -1, -1, -1]], [[1.0, -np.inf, -np.inf, -np.inf]] + [[-np.inf] * 4])
    popular = np.array([3, 9, 4, 8, 2, 1])
    out = fill_popular(short, popular, exclude=[np.array([9]), np.array([], np.int64)])
    assert out.ids.tolist() == [[3, 4, 8, 2], [3, 9, 4, 8]]
    assert out.scores[0, 0] == 1.0 and (out.scores[0, 1:] == 0).all()
    assert (out.interest[0, 1:] == -1).all()


def test_weight_grid_scores_each_direction_once_and_holds_every_channel_alone():
    grid = weight_grid(3, (0.0, 0.5, 1.0, 2.0))
    directions = {tuple(np.round(np.asarray(w) / max(w), 6)) for w in grid}
    assert len(directions) == len(grid)
    for c in range(3):
        assert any(sum(x > 0 for x in w) == 1 and w[c] > 0 for w in grid)
    assert (1.0, 1.0, 1.0) in grid and (0.5, 0.5, 0.5) not in grid
