"""The protocol sampler: cut points, padding, no target inside its own history, seeding."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dmirec.data.dataset import Sequences
from dmirec.data.sampler import TrainSampler, eval_split, gather_windows


def _seqs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # unique item ids per position make positions recoverable from values
    items = np.arange(1, offsets[-1] + 1, dtype=np.int32)
    rng.shuffle(items)
    return Sequences(offsets, items, np.arange(len(lengths)), np.zeros(offsets[-1], np.int64))


def test_gather_windows_left_pads():
    seqs = Sequences(np.array([0, 3]), np.array([7, 8, 9], np.int32), np.array([0]), np.zeros(3, np.int64))
    hist, mask = gather_windows(seqs, np.array([0, 0]), np.array([2, 3]), 4)
    assert hist.tolist() == [[0, 0, 7, 8], [0, 7, 8, 9]]
    assert mask.tolist() == [[False, False, True, True], [False, True, True, True]]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(5, 60), min_size=1, max_size=30), st.integers(1, 25), st.integers(0, 10_000))
def test_train_batches_respect_the_protocol(lengths, seq_len, seed):
    seqs = _seqs(lengths, seed)
    sampler = TrainSampler(seqs, batch_size=16, seq_len=seq_len, min_cut=4, seed=seed)
    b = sampler.sample()
    lens = seqs.lengths[b.rows]
    assert np.all(b.cut >= 4) and np.all(b.cut < lens)
    for i in range(len(b.rows)):
        seq = seqs.sequence(b.rows[i])
        assert b.target[i] == seq[b.cut[i]]
        window = seq[max(0, b.cut[i] - seq_len):b.cut[i]]
        real = b.history[i][b.mask[i]]
        assert real.tolist() == window.tolist()  # exactly the items before the cut, in order
        assert np.all(b.history[i][~b.mask[i]] == 0)  # padding is item 0, on the left
        assert b.mask[i].tolist() == sorted(b.mask[i].tolist())
        # no target position inside its own history window (items are unique per position here)
        assert b.target[i] not in real


def test_sampler_is_seeded_and_restorable():
    seqs = _seqs([10, 20, 30, 40, 7] * 10)
    a = TrainSampler(seqs, 8, 5, seed=3)
    b = TrainSampler(seqs, 8, 5, seed=3)
    a.sample()
    state = a.state()
    x = a.sample()
    b.set_state(state)
    y = b.sample()
    assert np.array_equal(x.history, y.history) and np.array_equal(x.target, y.target)


def test_distinct_users_within_a_batch_when_possible():
    seqs = _seqs([10] * 50)
    b = TrainSampler(seqs, 32, 5, seed=1).sample()
    assert len(set(b.rows.tolist())) == 32


def test_eval_split_cuts_at_80_percent():
    seqs = Sequences(np.array([0, 5, 15]), np.arange(1, 16, dtype=np.int32), np.array([4, 9]), np.zeros(15, np.int64))
    ev = eval_split(seqs, seq_len=3)
    assert [t.tolist() for t in ev.targets] == [[5], [14, 15]]  # int(0.8*5)=4, int(0.8*10)=8
    assert ev.history.tolist() == [[2, 3, 4], [11, 12, 13]]
    assert [h.tolist() for h in ev.full_history] == [[1, 2, 3, 4], list(range(6, 14))]
    assert ev.users.tolist() == [4, 9]
