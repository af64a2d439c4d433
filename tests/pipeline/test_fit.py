"""``dmirec fit`` end to end on a small synthetic log: stages, resume, recipe.yaml replay, the fit
folder read by evaluate, and the bundle serving the fitted recipe."""

from __future__ import annotations

import json

import pytest

from dmirec.cli.main import main as cli_main
from dmirec.config import ConfigError
from dmirec.data.synthetic import make_planted_dataset
from dmirec.pipeline.fit import STATE_FILE, fit, read_recipe_yaml
from dmirec.pipeline.settings import derive_settings
from dmirec.serving.bundle import load_bundle
from dmirec.serving.export import export_bundle

TINY = {"embedding_dim": 16, "max_steps": 100, "eval_every": 50, "batch_size": 64, "num_negatives": 64}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    base = tmp_path_factory.mktemp("fit")
    make_planted_dataset(base / "data", num_users=600, num_items=200, num_clusters=10)
    lines: list[str] = []
    report = fit(base / "data", base / "out", "quick", overrides=TINY, progress=False, log=lines.append)
    return base, report, lines


def test_fit_writes_every_stage_and_a_report(fitted):
    base, report, lines = fitted
    out = base / "out"
    state = json.loads((out / STATE_FILE).read_text())
    assert list(state["stages"]) == ["prepare", "settings", "train", "rule", "channels", "evaluate", "export"]
    assert {"recipe", "model", "itemknn", "remi", "most-popular"} <= set(report)
    assert any("under-trained" in line for line in lines)  # 100 steps: stopped by its budget, and it says so
    spec = read_recipe_yaml(out / "recipe.yaml")
    assert spec["neighbour_rule"]["neighbour_alpha"] in (0.0, 0.5, 1.6)
    assert spec["test"]["recall@50"] == report["recipe"]["recall@50"]
    assert "fitted recipe (served)" in (out / "report.md").read_text()
    bundle = load_bundle(out / "bundle")
    assert bundle.recipe is not None
    assert bundle.manifest["served"]["metrics"]["recall@50"] == pytest.approx(report["recipe"]["recall@50"])


def test_fit_resumes_without_redoing_stages(fitted):
    base, report, _ = fitted
    lines: list[str] = []
    again = fit(base / "data", base / "out", "quick", overrides=TINY, progress=False, log=lines.append)
    assert again == report
    assert sum("done before (resumed)" in line for line in lines) == 7


def test_recipe_yaml_replays_the_same_numbers(fitted):
    base, report, _ = fitted
    lines: list[str] = []
    replay = fit(base / "data", base / "replay", recipe=base / "out" / "recipe.yaml", progress=False,
                 log=lines.append)
    assert replay["recipe"]["recall@50"] == report["recipe"]["recall@50"]
    assert replay["recipe"]["ndcg@50"] == report["recipe"]["ndcg@50"]
    first, second = (json.loads((base / d / STATE_FILE).read_text())["stages"]["channels"] for d in ("out", "replay"))
    assert first["chosen"] == second["chosen"] and first["merger"] == second["merger"]


def test_evaluate_reads_a_fit_folder(fitted, capsys):
    base, report, _ = fitted
    assert cli_main(["evaluate", str(base / "out"), "--split", "test", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["recall@50"] == pytest.approx(report["recipe"]["recall@50"])


def test_settings_from_the_data(tmp_path):
    make_planted_dataset(tmp_path / "d", num_users=300, num_items=100, num_clusters=5)
    from dmirec.data.dataset import load_dataset

    s = derive_settings(load_dataset(tmp_path / "d"))
    assert s["seq_len"] in (20, 40, 80) and s["seq_len"] >= s["median_history"]
    assert 0.0 <= s["repeat_share"] <= 1.0 and s["ease"] is True
    assert derive_settings(load_dataset(tmp_path / "d"), ease_max_items=50)["ease"] is False


def test_fit_refuses_a_bad_recipe_file_by_name(tmp_path, capsys):
    bad = tmp_path / "recipe.yaml"
    bad.write_text("format: something-else\n")
    assert cli_main(["fit", str(tmp_path), "--out", str(tmp_path / "o"), "--recipe", str(bad)]) == 2
    assert "recipe.yaml: not a recipe written by dmirec fit" in capsys.readouterr().err


def test_resuming_with_other_config_keys_is_refused(fitted):
    base, _, _ = fitted
    with pytest.raises(ConfigError, match="started with config keys .*resume it with the same keys"):
        fit(base / "data", base / "out", "quick", overrides={**TINY, "lr": 0.01}, progress=False, log=lambda s: None)


def test_replay_with_a_config_key_applies_it_to_every_stage(fitted):
    """A recipe replayed with the approximate bank search: the backbone, the recipe's own channel and
    the bundle all carry it, and the replay's recipe.yaml records it."""
    base, report, _ = fitted
    out = base / "replay-hnsw"
    fit(base / "data", out, recipe=base / "out" / "recipe.yaml", overrides={"bank_search": "hnsw"}, progress=False,
        log=lambda s: None)
    assert read_recipe_yaml(out / "recipe.yaml")["backbone"]["config"]["bank_search"] == "hnsw"
    own = next(c for c in json.loads((out / "backbone" / "recipe" / "recipe.json").read_text())["channels"]
               if c["name"] == "model")
    assert own["config"]["bank_search"] == "hnsw"
    bundle = load_bundle(out / "bundle")
    assert bundle.model.bank is not None and bundle.model.bank.search_kind == "hnsw"
    # the graph is built on first use; a serving process builds it before it listens (Bundle.warm)
    rule = {k: str(v) for k, v in read_recipe_yaml(out / "recipe.yaml")["neighbour_rule"].items()}
    export_bundle(out / "backbone", out / "plain", recipe=None, served_metrics=False, query_sample=10, overrides=rule)
    plain = load_bundle(out / "plain")  # the backbone with its rule alone: the bank is searched
    assert plain.recipe is None and plain.model.bank._hnsw is None
    assert plain.warm() >= 0 and plain.model.bank._hnsw is not None


def test_fit_for_the_new_items_view_serves_no_history_item(tmp_path):
    """--new-items-only: the recipe is fitted and measured in that view, the report says so, and the
    bundle never returns an item of the request's history."""
    make_planted_dataset(tmp_path / "data", num_users=400, num_items=120, num_clusters=8)
    flags = [f"--{k}={v}" for k, v in TINY.items()]
    assert cli_main(["fit", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--budget", "quick",
                     "--new-items-only", "--no-progress", *flags]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    state = json.loads((tmp_path / "out" / STATE_FILE).read_text())
    assert state["stages"]["settings"]["new_items_only"] is True
    assert read_recipe_yaml(tmp_path / "out" / "recipe.yaml")["settings"]["new_items_only"] is True
    assert "new-items view" in (tmp_path / "out" / "report.md").read_text()
    assert report["recipe"]["users"] == report["remi"]["users"] == report["most-popular"]["users"]
    bundle = load_bundle(tmp_path / "out" / "bundle")
    history = bundle.item_ids[:15]
    got = [row["item"] for row in bundle.recommend(history, 50)["items"]]
    assert got and not set(got) & set(history)
    with pytest.raises(ConfigError, match="new_items_only"):
        fit(tmp_path / "data", tmp_path / "out", "quick", overrides=TINY, progress=False, log=lambda s: None)
