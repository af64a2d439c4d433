"""Vectorised batch construction for the ComiRec/REMI protocol.

Training (train users): each batch draws ``batch_size`` distinct users uniformly, a cut point
``k`` uniform in ``[min_cut, len - 1]`` per user, takes item ``k`` as the target and the
``seq_len`` items before it as the history. Evaluation (valid/test users): the first
``int(0.8 * len)`` items are the history (the last ``seq_len`` of them are the model input) and
the rest are the targets.

Histories are left-padded with item 0: the most recent item is always at position ``L - 1``.
The mask is True on real items. No target position is ever inside its own history window.
Everything is numpy gathers; no Python loop over users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import Sequences


def gather_windows(seqs: Sequences, rows: np.ndarray, ends: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Items at positions ``[end - seq_len, end)`` of each chosen sequence, left-padded with 0.

    rows: (B,) sequence indices; ends: (B,) exclusive end positions. Returns history (B, L)
    int64 and mask (B, L) bool.
    """
    pos = ends[:, None] - seq_len + np.arange(seq_len)[None, :]  # (B, L) positions in the sequence
    mask = pos >= 0  # (B, L)
    flat = seqs.offsets[rows][:, None] + np.where(mask, pos, 0)  # (B, L) indices into items
    history = np.where(mask, seqs.items[flat], 0).astype(np.int64)  # (B, L)
    return history, mask


def left_pad(seqs, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``seq_len`` ids of each id sequence, left-padded with 0: history (B, L) int64, mask (B, L)."""
    history = np.zeros((len(seqs), seq_len), dtype=np.int64)  # (B, L)
    for b, seq in enumerate(seqs):
        tail = np.asarray(seq)[-seq_len:]
        if len(tail):
            history[b, seq_len - len(tail):] = tail
    return history, history > 0


@dataclass
class TrainBatch:
    history: np.ndarray  # (B, L) int64
    mask: np.ndarray  # (B, L) bool
    target: np.ndarray  # (B,) int64
    rows: np.ndarray  # (B,) sequence index of each example
    cut: np.ndarray  # (B,) target position


class TrainSampler:
    """Seeded, stateful sampler of training batches; its state can be saved and restored."""

    def __init__(self, seqs: Sequences, batch_size: int, seq_len: int, min_cut: int = 4, seed: int = 0):
        lengths = seqs.lengths
        self.eligible = np.flatnonzero(lengths > min_cut)  # users with at least one valid cut
        if len(self.eligible) == 0:
            raise ValueError(f"no training sequence is longer than min_cut={min_cut}")
        self.seqs = seqs
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.min_cut = min_cut
        self.rng = np.random.default_rng(seed)
        self._lengths = lengths

    def sample(self) -> TrainBatch:
        n = len(self.eligible)
        replace = self.batch_size > n
        rows = self.eligible[self.rng.choice(n, size=self.batch_size, replace=replace)]  # (B,)
        span = self._lengths[rows] - self.min_cut  # number of valid cut points, >= 1
        cut = self.min_cut + (self.rng.random(self.batch_size) * span).astype(np.int64)  # (B,)
        cut = np.minimum(cut, self._lengths[rows] - 1)  # guard against float rounding at the top
        history, mask = gather_windows(self.seqs, rows, cut, self.seq_len)
        target = self.seqs.items[self.seqs.offsets[rows] + cut].astype(np.int64)  # (B,)
        return TrainBatch(history, mask, target, rows, cut)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


@dataclass
class EvalSet:
    """All evaluation users of a split, as fixed arrays."""

    history: np.ndarray  # (U, L) int64, the model input
    mask: np.ndarray  # (U, L) bool
    targets: list[np.ndarray]  # per user, the items after the cut (repeats kept)
    full_history: list[np.ndarray]  # per user, every item before the cut (for exclusion)
    users: np.ndarray  # (U,) new user ids


def eval_split(seqs: Sequences, seq_len: int, max_users: int = 0, sample_users: int = 0,
               seed: int = 0) -> EvalSet:
    """Histories and targets of valid/test users under the 80% cut of the protocol.

    ``max_users`` keeps the first users of the split; ``sample_users`` keeps a fixed random sample
    of that many users (seeded by ``seed``, in split order), the same on every call.
    """
    rows = np.arange(seqs.num_users)
    if max_users and max_users < len(rows):
        rows = rows[:max_users]
    if sample_users and sample_users < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=sample_users, replace=False))
    lengths = seqs.lengths[rows]
    cut = (lengths * 0.8).astype(np.int64)  # int(0.8 * len) as in the reference code
    keep = (cut > 0) & (cut < lengths)
    rows, cut, lengths = rows[keep], cut[keep], lengths[keep]
    history, mask = gather_windows(seqs, rows, cut, seq_len)
    starts = seqs.offsets[rows]
    targets = [seqs.items[s + c:s + n] for s, c, n in zip(starts, cut, lengths)]
    full_history = [seqs.items[s:s + c] for s, c in zip(starts, cut)]
    return EvalSet(history, mask, targets, full_history, seqs.users[rows])


def valid_split(seqs: Sequences, cfg) -> EvalSet:
    """The validation users of a run: all, the first ``eval_max_users``, or a seeded sample of
    ``valid_users`` (seeded by the run's seed; the test pass always uses every test user)."""
    return eval_split(seqs, cfg.seq_len, cfg.eval_max_users, cfg.valid_users, seed=cfg.seed)
