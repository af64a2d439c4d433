"""The streamed synthetic log: deterministic per seed, planted interests, power-law popularity."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dmirec.cli.main import main
from dmirec.data.dataset import load_dataset
from dmirec.data.prepare import prepare
from dmirec.data.synth_log import LogSpec, chunks, make_world, spec_from, write_log
from dmirec.training.train import make_config, train

SPEC = LogSpec(users=1500, items=600, clusters=12, chunk_users=400, seed=3)


def _read(path):
    return pq.read_table(path).to_pandas()


def test_same_seed_same_log_other_seed_other_log(tmp_path):
    write_log(SPEC, tmp_path / "a.parquet")
    write_log(SPEC, tmp_path / "b.parquet")
    write_log(LogSpec(**{**SPEC.__dict__, "seed": 4}), tmp_path / "c.parquet")
    a, b, c = (_read(tmp_path / f"{x}.parquet") for x in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    record = json.loads((tmp_path / "a.parquet.json").read_text())
    assert record["rows"] == len(a) and record["spec"]["seed"] == 3
    # csv carries the same rows
    write_log(SPEC, tmp_path / "a.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), a)


def test_log_shape_lengths_popularity_and_planted_interests(tmp_path):
    frame = pd.concat([pd.DataFrame({"user": np.repeat(u, np.diff(o)), "item": i, "t": t})
                       for u, o, i, t in chunks(SPEC)])
    lengths = frame.groupby("user").size()
    assert len(lengths) == SPEC.users and lengths.min() >= SPEC.min_len and lengths.max() <= SPEC.max_len
    assert frame["item"].between(1, SPEC.items).all()
    assert (frame.groupby("user")["t"].diff().dropna() > 0).all()  # each user's events in time order
    counts = np.sort(np.bincount(frame["item"], minlength=SPEC.items + 1)[1:])[::-1]
    assert counts[:6].sum() > 4 * counts[300:306].sum()  # a heavy head: popularity is skewed
    cluster = make_world(SPEC).item_cluster[frame["item"].to_numpy() - 1]
    per_user = pd.Series(cluster).groupby(frame["user"].to_numpy()).agg(
        lambda c: np.sort(np.bincount(c, minlength=SPEC.clusters))[::-1][:SPEC.max_interests].sum() / len(c))
    # beyond the 5% noise, a user's events lie in at most max_interests of the 12 clusters
    assert per_user.mean() > 0.9


def test_cli_preset_prepare_and_the_structure_is_learnable(tmp_path, capsys):
    out = tmp_path / "log.csv"
    assert main(["synth", str(out), "--preset", "small", "--users", "2000", "--items", "1000", "--clusters", "50",
                 "--seed", "1"]) == 0
    assert "interactions of 2,000 users" in capsys.readouterr().out
    prepare(out, tmp_path / "prep")
    data = load_dataset(tmp_path / "prep")
    assert data.num_items <= 1000
    over = {"embedding_dim": 16, "batch_size": 64, "num_negatives": 64, "seq_len": 10, "max_steps": 300,
            "eval_every": 150, "progress": False, "lr": 0.01, "device": "cpu"}
    model = train(make_config("comirec-sa", overrides=over), tmp_path / "prep", tmp_path / "run")
    popular = train(make_config("most-popular", overrides={"progress": False, "seq_len": 10}), tmp_path / "prep",
                    tmp_path / "pop")
    assert model["test"]["recall@50"] > 1.4 * popular["test"]["recall@50"]  # 0.41 vs 0.25 when written


def test_bad_spec_names_the_field():
    with pytest.raises(ValueError, match="clusters"):
        LogSpec(items=5, clusters=10)
    with pytest.raises(ValueError, match="preset"):
        spec_from("huge")
