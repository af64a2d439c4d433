"""`dmirec compare`: grouping by config minus seed, mean ± sd, the paired statistics, and the CLI."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
import yaml

from dmirec.evaluation.compare import (
    compare,
    format_mean_sd,
    group_runs,
    read_run_record,
    mean_sd,
    paired_bootstrap,
    sign_test,
    table_rows,
)
from dmirec.config import Config


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The tiny runs train on one thread (`threads: 1`, much faster on a busy machine); train() sets it
    process-wide, so put the previous value back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def fake_run(path, model: str, seed: int, recall50: float, data="/data/x", **config):
    """A finished run directory with the given test Recall@50 (other metrics derived from it)."""
    path.mkdir(parents=True)
    cfg = {**Config().to_dict(), "model": model, "seed": seed, **config}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (path / "data.json").write_text(json.dumps({"path": data, "name": "toy", "num_items": 10}))
    test = {"recall@20": recall50 / 2, "recall@50": recall50, "hitrate@20": 0.1, "hitrate@50": 0.2,
            "ndcg@20": 0.05, "ndcg@50": 0.06, "mrr@50": 0.01, "users": 100}
    (path / "result.json").write_text(json.dumps({"model": model, "dataset": "toy", "seed": seed, "test": test}))
    return path


def test_mean_sd_and_format():
    assert mean_sd([0.1, 0.2, 0.3]) == (pytest.approx(0.2), pytest.approx(0.1))
    assert mean_sd([0.5]) == (0.5, None)
    assert format_mean_sd([0.1, 0.2, 0.3]) == "0.2000 ± 0.1000"
    assert format_mean_sd([0.12345]) == "0.1235"
    with pytest.raises(ValueError):
        mean_sd([])


def test_compare_recovers_mean_and_sd_of_constructed_runs(tmp_path):
    a_vals, b_vals = [0.10, 0.13, 0.16], [0.20, 0.22]
    dirs = [fake_run(tmp_path / f"a{s}", "remi", s, v) for s, v in zip((1, 2, 3), a_vals)]
    dirs += [fake_run(tmp_path / f"b{s}", "dmi", s, v, backbone="remi") for s, v in zip((1, 2), b_vals)]
    dirs.append(fake_run(tmp_path / "c1", "dmi", 1, 0.3, backbone="remi", fusion_weight=0.5))
    c = compare(dirs, paired=False)
    labels = [g.label for g in c["groups"]]
    assert labels == ["remi", "dmi, fusion_weight=0.2", "dmi, fusion_weight=0.5"]
    col = c["header"].index("recall@50")
    cells = [row[col] for row in c["rows"]]
    assert cells[0] == f"{statistics.mean(a_vals):.4f} ± {statistics.stdev(a_vals):.4f}" == "0.1300 ± 0.0300"
    assert cells[1] == "0.2100 ± 0.0141" and cells[2] == "0.3000"
    assert [row[1] for row in c["rows"]] == ["1,2,3", "1,2", "1"]
    # --by model: the two DMI configurations fall into one group
    groups = group_runs([read_run_record(d) for d in dirs], by=["model"])
    assert [g.label for g in groups] == ["remi", "dmi"] and len(groups[1].runs) == 3
    groups = group_runs([read_run_record(d) for d in dirs[3:]], by=["fusion_weight"])  # the DMI runs by fusion weight alone
    assert [g.label for g in groups] == ["fusion_weight=0.2", "fusion_weight=0.5"] and [len(g.runs) for g in groups] == [2, 1]


def test_compare_refuses_duplicate_seeds_and_unfinished_runs(tmp_path):
    dirs = [fake_run(tmp_path / "a", "remi", 1, 0.1), fake_run(tmp_path / "b", "remi", 1, 0.2)]
    with pytest.raises(ValueError, match="same seed"):
        compare(dirs, paired=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.yaml").write_text("model: remi\n")
    with pytest.raises(FileNotFoundError, match="not finished"):
        read_run_record(tmp_path / "c")


def test_paired_statistics_known_answers():
    b = np.linspace(0, 1, 50)
    boot = paired_bootstrap(b + 0.1, b, resamples=500)
    assert boot["mean_diff"] == pytest.approx(0.1)
    assert boot["ci_low"] == pytest.approx(0.1) and boot["ci_high"] == pytest.approx(0.1)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=400)
    wide = paired_bootstrap(noise, np.zeros(400), resamples=1000, seed=2)
    assert wide["ci_low"] < noise.mean() < wide["ci_high"]
    assert wide["ci_high"] - wide["ci_low"] == pytest.approx(2 * 1.96 * noise.std() / 20, rel=0.2)
    s = sign_test(np.ones(10), np.zeros(10))
    assert (s["wins"], s["losses"], s["ties"]) == (10, 0, 0) and s["p_value"] == pytest.approx(2 / 1024)
    s = sign_test(np.array([1, 0, 2, 2]), np.array([0, 1, 2, 2]))
    assert (s["wins"], s["losses"], s["ties"]) == (1, 1, 2) and s["p_value"] == 1.0


def test_paired_test_on_real_runs_and_cli(tmp_path, capsys):
    from dmirec.cli.main import main
    from dmirec.data.synthetic import make_planted_dataset
    from dmirec.training.train import make_config, train

    data = make_planted_dataset(tmp_path / "data", num_users=200, num_items=60, num_clusters=4)
    ov = {"embedding_dim": 8, "max_steps": 10, "eval_every": 10, "batch_size": 32, "num_negatives": 16,
          "progress": False, "device": "cpu", "seq_len": 8, "threads": 1}
    runs = []
    for model, seed in (("comirec-sa", 1), ("comirec-sa", 2), ("most-popular", 1)):
        runs.append(tmp_path / f"{model}-{seed}")
        train(make_config(model, overrides={**ov, "seed": seed}), data, runs[-1])
    c = compare(runs, metric="recall@50", resamples=200)
    (t,) = c["tests"]
    assert t["users"] == 20 and t["baseline"] == "comirec-sa" and t["group"] == "most-popular"
    assert t["wins"] + t["losses"] + t["ties"] == 20 and t["ci_low"] <= t["mean_diff"] <= t["ci_high"]
    # the per-user mean difference is the difference of the groups' test means
    means = [np.mean([read_run_record(r).test["recall@50"] for r in rs]) for rs in (runs[2:], runs[:2])]
    assert t["mean_diff"] == pytest.approx(means[0] - means[1])
    out = tmp_path / "cmp.md"
    assert main(["compare", *map(str, runs), "--out", str(out), "--bootstrap", "100"]) == 0
    text = out.read_text()
    assert "| comirec-sa | 1,2 |" in text and "sign test" in text
    if c["chart"]:
        assert (tmp_path / "cmp.png").stat().st_size > 1000 and "![test recall@50](cmp.png)" in text
    html_out = tmp_path / "cmp.html"
    assert main(["compare", *map(str, runs), "--out", str(html_out), "--no-paired"]) == 0
    assert "<table>" in html_out.read_text()
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
