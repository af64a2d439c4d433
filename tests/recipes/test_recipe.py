"""Item-to-item models in the zoo and recipes of channels: fitted on validation users, evaluated,
exported, and served over HTTP and in batch exactly as evaluated."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from dmirec.cli.main import main as cli_main
from dmirec.data.dataset import load_dataset
from dmirec.data.sampler import eval_split
from dmirec.evaluation.evaluate import evaluate_run, load_run, rank_users
from dmirec.serving.export import export_bundle
from dmirec.models import build_model
from dmirec.recipes.fit import RRF_KS, evaluate_recipe, fit_recipe, load_run_recipe, weight_grid
from dmirec.recipes.recipe import Recipe, RecipeError, channel_list, load_recipe, make_channel
from dmirec.serving.batch import recommend_batch
from dmirec.serving.bundle import load_bundle
from dmirec.training.train import make_config, train

SMALL = {"itemknn_grid": [{"itemknn_shrink": 10.0, "itemknn_neighbours": 50}],
         "rp3beta_grid": [{"rp3beta_alpha": 0.5, "rp3beta_beta": 0.25, "rp3beta_neighbours": 50}],
         "scoring_grid": [{"history_decay": 0.0, "exclude_history": False}, {"history_decay": 0.1, "exclude_history": True}],
         "ease_grid": [{"ease_lambda": 50.0}, {"ease_lambda": 500.0}]}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_serving_run):
    """A copy of the tiny serving run with a recipe of the run, ItemKNN, EASE and the repeat channel."""
    data_dir, run_dir = tiny_serving_run
    run = tmp_path_factory.mktemp("recipe") / "run"
    shutil.copytree(run_dir, run)
    record = fit_recipe(run, ["model", "itemknn", "rp3beta", "ease", "repeat"], **SMALL)
    return data_dir, run, record


@pytest.mark.parametrize("name", ["itemknn", "rp3beta", "ease"])
def test_item_item_models_train_evaluate_and_reload(tmp_path, tiny_serving_run, name):
    data_dir, _ = tiny_serving_run
    result = train(make_config(name, overrides={"progress": False, "seq_len": 10}), data_dir, tmp_path / name)
    assert result["stopped"] == "nothing to train" and result["test"]["recall@50"] > 0.3
    again = evaluate_run(tmp_path / name, split="test")  # the reloaded checkpoint carries the matrix
    assert again["recall@50"] == result["test"]["recall@50"]
    model, cfg, data = load_run(tmp_path / name)
    ev = eval_split(data.splits["test"], cfg.seq_len)
    res = rank_users(model, ev, 40)
    assert (res.ids > 0).all()  # every user gets n items (popular fill), never the padding item
    assert all(len(set(row)) == 40 for row in res.ids.tolist())
    excl = rank_users(model, ev, 40, exclude_history=True)
    for row, hist in zip(excl.ids, ev.full_history):
        assert not set(row.tolist()) & set(hist.tolist())


def test_ease_refuses_an_oversized_catalogue(tiny_serving_run):
    data_dir, _ = tiny_serving_run
    data = load_dataset(data_dir)
    model = build_model(make_config("ease", overrides={"ease_max_items": 100}), data.num_items)
    with pytest.raises(ValueError, match=r"EASE on 200 items needs a dense .* GiB.*max_items=100"):
        model.fit(data.splits["train"])


def test_one_hot_recipe_is_that_channel(tiny_serving_run):
    data_dir, run_dir = tiny_serving_run
    model, cfg, data = load_run(run_dir)
    ev = eval_split(data.splits["test"], cfg.seq_len)
    knn = build_model(cfg.replace(model="itemknn", num_interests=1, max_steps=0), data.num_items,
                      data.item_popularity("train")).fit(data.splits["train"])
    knn_cfg = cfg.replace(model="itemknn", num_interests=1, max_steps=0)
    channels = [make_channel("model", model, cfg), make_channel("itemknn", knn, knn_cfg)]
    pop = data.item_popularity("train")
    order = np.lexsort((np.arange(pop.size), -pop))
    for weights, want in (([1.0, 0.0], rank_users(model, ev, 30)), ([0.0, 2.0], rank_users(knn, ev, 30))):
        for merger in ("rrf", "score"):
            recipe = Recipe(channels, weights, merger, popular_order=order[order > 0])
            np.testing.assert_array_equal(recipe.rank(ev.full_history, 30).ids, want.ids)


def test_fit_never_below_the_best_channel_and_writes_the_grid(fitted):
    _, run, record = fitted
    best_alone = max(v["recall@50"] for v in record["channels_alone"].values())
    assert record["chosen"]["recall@50"] >= best_alone
    assert record["users"] == 60
    assert len(record["merger_grid"]) == (len(RRF_KS) + 1) * len(weight_grid(5))
    spec = json.loads((run / "recipe" / "recipe.json").read_text())
    assert [c["name"] for c in spec["channels"]] == ["model", "itemknn", "rp3beta", "ease", "repeat"]
    assert spec["weights"] == record["chosen"]["weights"]
    assert {p["ease_lambda"] for p in record["channel_grids"]["ease"]} == {50.0, 500.0}
    assert {p["exclude_history"] for p in record["channel_grids"]["itemknn"]} == {False, True}
    assert {p["exclude_history"] for p in record["channel_grids"]["model"]} == {False, True}
    assert (run / "recipe" / "channel-itemknn.pt").exists() and not (run / "recipe" / "channel-model.pt").exists()


def test_recipe_round_trip_gives_the_same_numbers(fitted):
    data_dir, run, record = fitted
    recipe, _, cfg, data = load_run_recipe(run, run / "recipe")
    first = evaluate_recipe(recipe, data, "valid", cfg.seq_len)
    assert first["recall@50"] == pytest.approx(record["chosen"]["recall@50"], abs=1e-12)
    again = evaluate_recipe(load_run_recipe(run, run / "recipe")[0], data, "test", cfg.seq_len)
    assert again["recall@50"] == evaluate_recipe(recipe, data, "test", cfg.seq_len)["recall@50"]


def test_evaluate_cli_uses_the_recipe_and_none_the_model(fitted, capsys):
    _, run, _ = fitted
    assert cli_main(["evaluate", str(run), "--json"]) == 0
    with_recipe = json.loads(capsys.readouterr().out)
    assert cli_main(["evaluate", str(run), "--json", "--recipe", "none"]) == 0
    alone = json.loads(capsys.readouterr().out)
    recipe, _, cfg, data = load_run_recipe(run, run / "recipe")
    assert with_recipe["recall@50"] == pytest.approx(evaluate_recipe(recipe, data, "test", cfg.seq_len)["recall@50"])
    assert alone["recall@50"] == pytest.approx(evaluate_run(run)["recall@50"])
    assert cli_main(["evaluate", str(run), "--neighbour_alpha=0.5"]) == 2  # the recipe fixes its settings
    assert "--recipe none" in capsys.readouterr().err


def test_bundle_serves_the_recipe_over_http_and_batch_as_evaluated(fitted, tmp_path):
    from fastapi.testclient import TestClient

    from dmirec.serving.app import create_app

    data_dir, run, _ = fitted
    manifest = export_bundle(run, tmp_path / "bundle", query_sample=20)
    recipe, _, cfg, data = load_run_recipe(run, run / "recipe")
    want = evaluate_recipe(recipe, data, "test", cfg.seq_len)
    assert manifest["served"]["what"] == "recipe"
    assert manifest["served"]["metrics"]["recall@50"] == pytest.approx(want["recall@50"])
    assert [c["name"] for c in manifest["recipe"]["channels"]] == ["model", "itemknn", "rp3beta", "ease", "repeat"]
    bundle = load_bundle(tmp_path / "bundle")
    ev = eval_split(data.splits["test"], cfg.seq_len)
    res, fallback = bundle.recommend_ids(ev.full_history, 50)
    np.testing.assert_array_equal(res.ids, recipe.rank(ev.full_history, 50).ids)
    client = TestClient(create_app(bundle))
    meta = client.get("/metadata").json()
    assert meta["recipe"]["channels"][1]["itemknn_neighbours"] == 50
    assert meta["served_metrics"]["metrics"]["recall@50"] == pytest.approx(want["recall@50"])
    raw = [[data.item_ids[i - 1] for i in h] for h in ev.full_history[:5]]
    for u, history in enumerate(raw):
        body = client.post("/recommend", json={"history": history, "n": 50}).json()
        assert [x["item"] for x in body["items"]] == [data.item_ids[i - 1] for i in res.ids[u]]
    log = pd.DataFrame([(f"u{u}", item, t) for u, h in enumerate(raw) for t, item in enumerate(h)],
                       columns=["user_id", "item_id", "timestamp"])
    log.to_csv(tmp_path / "log.csv", index=False)
    recommend_batch(tmp_path / "bundle", tmp_path / "log.csv", tmp_path / "out.parquet", n=50, progress=False)
    cand = pd.read_parquet(tmp_path / "out.parquet")
    for u in range(5):
        assert cand[cand["user"] == f"u{u}"]["item"].tolist() == [data.item_ids[i - 1] for i in res.ids[u]]


def test_tampered_channel_weights_are_refused_by_name(fitted, tmp_path):
    from dmirec.serving.bundle import BundleError

    _, run, _ = fitted
    export_bundle(run, tmp_path / "bundle", query_sample=5, served_metrics=False)
    path = tmp_path / "bundle" / "channel-itemknn.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="channel-itemknn.pt: checksum failed"):
        load_bundle(tmp_path / "bundle")


def test_bad_recipe_files_name_the_file(fitted, tmp_path):
    data_dir, run, _ = fitted
    folder = tmp_path / "r"
    shutil.copytree(run / "recipe", folder)
    spec = json.loads((folder / "recipe.json").read_text())
    model, cfg, data = load_run(run)
    spec["channels"][1]["name"] = "../evil"
    (folder / "recipe.json").write_text(json.dumps(spec))
    with pytest.raises(RecipeError, match="recipe.json: 'channels' must be"):
        load_recipe(folder, model, cfg, data.num_items, data.item_popularity("train"))
    (folder / "recipe.json").write_text("{")
    with pytest.raises(RecipeError, match="recipe.json: not valid JSON"):
        load_recipe(folder, model, cfg, data.num_items, data.item_popularity("train"))


def test_fit_channels_cli(tiny_serving_run, tmp_path, capsys):
    _, run_dir = tiny_serving_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert cli_main(["fit-channels", str(run), "--channels", "model,itemknn", "--depth", "60"]) == 0
    out = capsys.readouterr().out
    assert "itemknn" in out and "merged (" in out and (run / "recipe" / "recipe.json").exists()
    assert cli_main(["fit-channels", str(run), "--channels", "model,bogus"]) == 2
    assert "not one of" in capsys.readouterr().err


def test_channel_list_of_a_vector_model_matches_evaluation(tiny_serving_run):
    _, run_dir = tiny_serving_run
    model, cfg, data = load_run(run_dir)
    ev = eval_split(data.splits["valid"], cfg.seq_len)
    with torch.no_grad():
        got = channel_list(make_channel("model", model, cfg), ev.full_history, 25)
    np.testing.assert_array_equal(got.ids, rank_users(model, ev, 25).ids)
