"""``valid_users``: a fixed seeded sample of validation users; the test pass stays full."""

import numpy as np
import pytest

from dmirec.config import ConfigError
from dmirec.data.dataset import load_dataset
from dmirec.data.sampler import eval_split, valid_split
from dmirec.data.synthetic import make_planted_dataset
from dmirec.runs import rundir
from dmirec.training.train import make_config, train


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted_dataset(tmp_path_factory.mktemp("planted"), num_users=600, num_items=200, num_clusters=10)


def test_sample_is_seeded_fixed_and_a_subset(planted):
    valid = load_dataset(planted).splits["valid"]
    full = eval_split(valid, 10)
    a = eval_split(valid, 10, sample_users=20, seed=5)
    b = eval_split(valid, 10, sample_users=20, seed=5)
    c = eval_split(valid, 10, sample_users=20, seed=6)
    assert len(a.users) == 20 and np.array_equal(a.users, b.users) and not np.array_equal(a.users, c.users)
    assert np.all(np.diff(a.users) > 0) and set(a.users) <= set(full.users)
    assert not np.array_equal(a.users, full.users[:20])  # a sample, not the first users
    row = {u: i for i, u in enumerate(full.users)}
    for i, u in enumerate(a.users):  # each sampled user keeps its own history and targets
        assert np.array_equal(a.history[i], full.history[row[u]])
        assert np.array_equal(a.targets[i], full.targets[row[u]])
    assert len(eval_split(valid, 10, sample_users=10**6).users) == len(full.users)
    cfg = make_config("comirec-sa", overrides={"valid_users": 20, "seed": 5, "seq_len": 10})
    assert np.array_equal(valid_split(valid, cfg).users, a.users)


def test_training_validates_on_the_sample_and_tests_on_everyone(planted, tmp_path):
    over = {"embedding_dim": 16, "batch_size": 32, "num_negatives": 32, "seq_len": 10, "max_steps": 20,
            "eval_every": 10, "progress": False, "valid_users": 25}
    result = train(make_config("comirec-sa", overrides=over), planted, tmp_path / "run")
    rows = rundir.read_metrics(tmp_path / "run")
    assert [r["users"] for r in rows if r["split"] == "valid"] == [25, 25]
    assert result["test"]["users"] == len(eval_split(load_dataset(planted).splits["test"], 10).users) > 25


def test_valid_users_and_eval_max_users_are_exclusive():
    with pytest.raises(ConfigError, match="valid_users"):
        make_config("comirec-sa", overrides={"valid_users": 10, "eval_max_users": 10})
