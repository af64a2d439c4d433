"""Diagnostics on hand-built inputs, the HTML report for every model, its screenshot, and TensorBoard logs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dmirec.evaluation import diagnostics as dg
from dmirec.models import REGISTRY

@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The tiny runs train on one thread (`threads: 1`, much faster on a busy machine); train() sets it
    process-wide, so put the previous value back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---- diagnostics with known answers -----------------------------------------------------------


def test_identical_interests_have_zero_diversity_orthogonal_one():
    same = np.tile(np.array([1.0, 2.0, -1.0]), (2, 4, 1))  # (U=2, K=4, D=3), all the same
    assert dg.interest_diversity(same) == pytest.approx([0.0, 0.0], abs=1e-12)
    ortho = np.eye(3)[None]  # (1, 3, 3)
    assert dg.interest_diversity(ortho) == pytest.approx([1.0])
    opposite = np.array([[[1.0, 0.0], [-1.0, 0.0]]])
    assert dg.interest_diversity(opposite) == pytest.approx([2.0])
    assert np.isnan(dg.interest_diversity(np.ones((3, 1, 4)))).all()  # K = 1: no pairs


def test_category_purity_and_diversity():
    cats = np.array([-1, 0, 0, 0, 1, 1, -1])  # item 0 padding, items 1-3 in 0, 4-5 in 1, 6 unknown
    lists = np.array([[1, 2, 3, -1], [1, 2, 4, 5], [1, 4, 6, 6], [6, 6, -1, -1]])
    assert dg.category_purity(lists[:1], cats) == pytest.approx([1.0])  # all one category
    pur = dg.category_purity(lists, cats)
    assert pur[:3] == pytest.approx([1.0, 0.5, 0.5]) and np.isnan(pur[3])  # unknown items are left out
    div = dg.category_diversity(lists, cats)
    # list 1: pairs (1,2) same, (4,5) same, 4 cross pairs of 6 -> 4/6; list 2: one pair, different
    assert div[:3] == pytest.approx([0.0, 4 / 6, 1.0]) and np.isnan(div[3])
    # purity keeps the leading shape: (U, K, N) -> (U, K)
    assert dg.category_purity(np.stack([lists, lists]), cats).shape == (2, 4)


def test_identity_refiner_moves_nothing():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5, 3, 8))
    shift = dg.refinement_shift(v, v.copy())
    assert shift["norm_ratio"] == pytest.approx(np.ones((5, 3)))
    assert shift["relative_change"] == pytest.approx(np.zeros((5, 3)))
    assert shift["cosine"] == pytest.approx(np.ones((5, 3)))
    prof = dg.dimension_profile(v, v)
    assert not prof["mean_abs_change"].any() and not prof["relative"].any()
    recs = rng.permuted(np.tile(np.arange(1, 11), (5, 1)), axis=1)
    hits = rng.random((5, 10)) < 0.3
    assert dg.list_overlap(recs, recs, 10) == pytest.approx(np.ones(5))
    gl = dg.hits_gained_lost(hits, hits, recs, recs, 10)
    assert not gl["gained"].any() and not gl["lost"].any()


def test_refinement_shift_known_values():
    coarse = np.array([[[3.0, 4.0]]])  # norm 5
    refined = np.array([[[3.0, 0.0]]])
    s = dg.refinement_shift(coarse, refined)
    assert s["norm_ratio"][0, 0] == pytest.approx(3 / 5)
    assert s["relative_change"][0, 0] == pytest.approx(4 / 5)
    assert s["cosine"][0, 0] == pytest.approx(3 / 5)
    prof = dg.dimension_profile(coarse, refined)
    assert prof["mean_abs_change"] == pytest.approx([0.0, 4.0]) and prof["mean_change"] == pytest.approx([0.0, -4.0])


def test_overlap_and_gained_lost_counts():
    a = np.array([[1, 2, 3, 4]])
    b = np.array([[4, 3, 9, 8]])
    assert dg.list_overlap(a, b, 4) == pytest.approx([0.5])
    assert dg.list_overlap(a, b, 2) == pytest.approx([0.0])
    from dmirec.evaluation.metrics import hit_matrix

    targets = [[1, 9, 3]]
    gl = dg.hits_gained_lost(hit_matrix(a, targets), hit_matrix(b, targets), a, b, 4)
    assert gl["gained"].tolist() == [1] and gl["lost"].tolist() == [1]  # a gains item 1, loses item 9


def test_argmax_and_slot_share():
    items = np.zeros((5, 2))
    items[1:3] = [1.0, 0.0]  # items 1, 2 point along interest 0
    items[3:5] = [0.0, 1.0]  # items 3, 4 along interest 1
    interests = np.array([[[1.0, 0.0], [0.0, 1.0]]] * 2)  # (2, 2, 2)
    share = dg.argmax_share(interests, items, [[1, 2, 3], [4]])
    assert share == pytest.approx([0.5, 0.5])
    assert dg.argmax_share(interests, items, [[1, 2, 1], [2]]) == pytest.approx([1.0, 0.0])
    assert dg.slot_share(np.array([[0, 0, 1, -1]]), 3) == pytest.approx([2 / 3, 1 / 3, 0.0])


def test_repeat_hits_counts_history_items():
    recs = np.array([[5, 6, 7], [1, 2, 3]])
    hits = np.array([[True, True, False], [False, True, True]])
    out = dg.repeat_hits(recs, hits, [np.array([5, 9]), np.array([4])], 3)
    assert out == {"hits": 4, "repeat_hits": 1}
    assert dg.repeat_hits(recs, hits, [np.array([5, 9]), np.array([4])], 1) == {"hits": 1, "repeat_hits": 1}


def test_top_items_orders_by_score_and_skips_padding():
    items = np.array([[9.0], [1.0], [3.0], [2.0]])  # row 0 is padding with the top score
    assert dg.top_items(np.array([[1.0]]), items, 2).tolist() == [[2, 3]]


def test_read_categories_formats(tmp_path):
    item_ids = ["a", "b", "c", "d"]
    csv = tmp_path / "cats.csv"
    csv.write_text("item_id,category\na,x\nc,y\nzz,x\nd,x\n")
    cats, info = dg.read_categories(csv, item_ids)
    assert cats.tolist() == [-1, 0, -1, 1, 0] and info["rows_unmatched"] == 1 and info["id_space"] == "raw"
    comirec = tmp_path / "toy_item_cate.txt"  # ComiRec: prepared ids 1..N
    comirec.write_text("2,7\n4,7\n1,3\n")
    cats, info = dg.read_categories(comirec, item_ids)
    assert info["id_space"] == "new" and cats.tolist() == [-1, 1, 0, -1, 0]
    recbole = tmp_path / "toy.item"
    recbole.write_text("item_id:token\ttitle:token_seq\tcategories:token_seq\na\tA thing\tshoes red\nb\tB\t\n")
    cats, info = dg.read_categories(recbole, item_ids)
    assert cats.tolist() == [-1, 0, -1, -1, -1] and info["categories"] == ["shoes"]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,x\nb,y,z\n")
    with pytest.raises(ValueError, match="line 2"):
        dg.read_categories(bad, item_ids)
    none = tmp_path / "none.csv"
    none.write_text("q,x\n")
    with pytest.raises(ValueError, match="no row names an item"):
        dg.read_categories(none, item_ids)


def test_untrained_dmi_refiner_is_the_identity():
    from dmirec.models import build_model
    from dmirec.training.train import make_config

    torch.manual_seed(0)
    cfg = make_config("dmi", overrides={"embedding_dim": 8, "seq_len": 6, "device": "cpu"})
    model = build_model(cfg, 30).eval()
    hist = torch.randint(1, 31, (4, 6))  # (B, L)
    mask = torch.ones(4, 6, dtype=torch.bool)
    with torch.no_grad():
        out = model.refine(hist, mask)
    shift = dg.refinement_shift(out["coarse"].numpy(), out["user"].numpy())
    assert shift["relative_change"].max() < 1e-5 and shift["cosine"].min() > 1 - 1e-6


# ---- the report on tiny runs of every model ---------------------------------------------------

OVERRIDES = {"embedding_dim": 8, "max_steps": 12, "eval_every": 6, "batch_size": 32, "num_negatives": 16,
             "progress": False, "device": "cpu", "seq_len": 8, "threads": 1}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A planted dataset (4 clusters of 20 items), its category file, and a tiny run of every model."""
    from dmirec.data.synthetic import make_planted_dataset
    from dmirec.training.train import make_config, train

    base = tmp_path_factory.mktemp("report_runs")
    data = make_planted_dataset(base / "data", num_users=200, num_items=80, num_clusters=4)
    cats = base / "cats.csv"
    cats.write_text("item,category\n" + "".join(f"i{k},c{(k - 1) // 20}\n" for k in range(1, 81)))
    runs = {}
    for name in REGISTRY:
        runs[name] = base / name
        train(make_config(name, overrides=OVERRIDES), data, runs[name])
    return data, cats, runs


@pytest.fixture(scope="module")
def matplotlib_agg():
    pytest.importorskip("matplotlib", reason="the report needs matplotlib (extra `report`)")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_report_builds_for_every_model_with_every_section(tiny_runs, matplotlib_agg, name, tmp_path):
    from dmirec.evaluation.report import SECTIONS, build_report

    _, cats, runs = tiny_runs
    out = build_report(runs[name], tmp_path / "r.html", categories=cats, users=15)
    page = out.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    for fig in ("curves", "interests", "categories"):
        assert f'id="fig-{fig}"' in page and (tmp_path / f"r_{fig}.png").stat().st_size > 1000
    assert ('id="fig-refinement"' in page) == (name == "dmi")
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page  # offline
    assert "i" in page and "[c" in page  # example items carry raw ids and categories


def test_report_numbers_match_the_planted_categories(tiny_runs, matplotlib_agg):
    from dmirec.evaluation.report import analyse_run

    _, cats, runs = tiny_runs
    a = analyse_run(runs["comirec-sa"], categories=cats, users=0)
    assert a["sample"]["users"] == a["sample"]["of"] == 20
    pur = a["category_purity"]
    assert pur.shape == (20, 4) and np.all((pur >= 0.25) & (pur <= 1.0))
    assert a["argmax_share"].sum() == pytest.approx(1.0)
    # the sample is seeded: the same seed gives the same users and numbers
    b = analyse_run(runs["comirec-sa"], categories=cats, users=7, seed=3)
    c = analyse_run(runs["comirec-sa"], categories=cats, users=7, seed=3)
    assert [e["user"] for e in b["examples"]] == [e["user"] for e in c["examples"]]
    assert np.array_equal(b["diversity"], c["diversity"])


def test_report_of_dmi_compares_refined_with_coarse(tiny_runs, matplotlib_agg):
    from dmirec.evaluation.report import analyse_run

    _, _, runs = tiny_runs
    a = analyse_run(runs["dmi"], users=0)
    r = a["refine"]
    assert r["shift"]["relative_change"].shape == (20, 4) and r["profile"]["relative"].shape == (8,)
    assert np.all((r["overlap"] >= 0) & (r["overlap"] <= 1))
    # refined recall minus coarse recall is hits gained minus lost over the targets (test users' lists)
    assert a["repeats"][50]["hits"] >= a["repeats"][50]["repeat_hits"] >= 0


def test_report_shows_the_bundle_index_recall(tiny_runs, matplotlib_agg, tmp_path):
    from dmirec.serving.export import export_bundle
    from dmirec.evaluation.report import build_report
    from dmirec.serving.index import build_index

    _, _, runs = tiny_runs
    bundle = tmp_path / "bundle"
    export_bundle(runs["comirec-sa"], bundle)
    info = build_index(bundle, "flat", verbose=False)
    page = build_report(runs["comirec-sa"], tmp_path / "r.html", bundle=bundle, users=10).read_text()
    section = page.split('<section id="index">')[1].split("</section>")[0]
    assert "flat" in section and f"{info['recall']['merged']:.4f}" in section


def test_report_cli_and_missing_run(tiny_runs, matplotlib_agg, tmp_path, capsys):
    from dmirec.cli.main import main

    _, cats, runs = tiny_runs
    out = tmp_path / "x" / "rep.html"
    assert main(["report", str(runs["mind"]), "--out", str(out), "--categories", str(cats), "--users", "5"]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["report", str(runs["mind"]), "--categories", str(tmp_path / "no.csv")]) == 2
    assert "no.csv" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_chromium_screenshot_shows_the_figures(tiny_runs, matplotlib_agg, tmp_path):
    """Render the report headless and look for the figures' colours in the screenshot."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no headless Chromium installed (Debian: apt-get install chromium)")
    import matplotlib.image as mpimg

    from dmirec.evaluation.report import build_report

    _, cats, runs = tiny_runs
    page = build_report(runs["dmi"], tmp_path / "r.html", categories=cats, users=10)
    shots = {}
    for label, path in (("report", page), ("no_figures", tmp_path / "plain.html")):
        if label == "no_figures":  # the same page without its images: the colours must come from the figures
            import re

            path.write_text(re.sub(r'<img [^>]*>', "", page.read_text()))
        shot = tmp_path / f"{label}.png"
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,4000",
               f"--screenshot={shot}", path.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, timeout=60, text=True)
        if not shot.exists():
            pytest.skip(f"chromium could not take a screenshot here: {proc.stderr[-300:]}")
        shots[label] = mpimg.imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]

    def figure_pixels(img: np.ndarray) -> int:
        # matplotlib's default blue (31, 119, 180) and green (44, 160, 44) bars and lines
        blue = np.abs(img - np.array([31, 119, 180]) / 255).max(axis=2) < 0.06
        green = np.abs(img - np.array([44, 160, 44]) / 255).max(axis=2) < 0.06
        return int(blue.sum() + green.sum())

    assert figure_pixels(shots["report"]) > 2000
    assert figure_pixels(shots["no_figures"]) < 50


def test_tensorboard_logs_the_validation_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="the `tensorboard` extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dmirec.data.synthetic import make_planted_dataset
    from dmirec.runs.rundir import read_metrics
    from dmirec.training.train import make_config, train

    data = make_planted_dataset(tmp_path / "data", num_users=100, num_items=40, num_clusters=4)
    run = tmp_path / "run"
    train(make_config("comirec-sa", overrides={**OVERRIDES, "tensorboard": True}), data, run)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("valid/recall@50")]
    rows = [r for r in read_metrics(run) if r["split"] == "valid"]
    assert [s for s, _ in logged] == [r["step"] for r in rows]
    assert [v for _, v in logged] == pytest.approx([r["recall@50"] for r in rows], rel=1e-6)
    assert acc.Scalars("test/recall@50")[0].value == pytest.approx(json.loads((run / "result.json").read_text())
                                                                   ["test"]["recall@50"], rel=1e-6)


def test_metric_cutoffs_add_to_the_default_ones(tiny_runs):
    from dmirec.evaluation.evaluate import evaluate_run

    _, _, runs = tiny_runs
    base = evaluate_run(runs["comirec-sa"])
    more = evaluate_run(runs["comirec-sa"], ns=(10, 60))
    assert {"recall@10", "recall@20", "recall@50", "recall@60", "mrr@10", "coverage@60"} <= set(more)
    for k in ("recall@20", "recall@50", "ndcg@50", "hitrate@20"):
        assert more[k] == pytest.approx(base[k])
    assert more["recall@10"] <= more["recall@20"] <= more["recall@60"]
    assert 0 < more["coverage@10"] <= more["coverage@60"] <= 1


def test_ns_option_on_the_command_line(tiny_runs, capsys):
    from dmirec.cli.main import main
    from dmirec.config import from_dict
    from dmirec.runs.rundir import read_config, write_config

    _, _, runs = tiny_runs
    assert main(["evaluate", str(runs["comirec-sa"]), "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(runs["comirec-sa"]), "--ns", "10,60", "--json"]) == 0
    more = json.loads(capsys.readouterr().out)
    assert {"recall@10", "recall@60", "mrr@10", "mrr@50", "coverage@60"} <= set(more)
    assert more["recall@50"] == pytest.approx(base["recall@50"])
    assert main(["evaluate", str(runs["comirec-sa"]), "--ns", "ten"]) == 2
    assert "metric_ns" in capsys.readouterr().err
    # the config key survives config.yaml
    cfg = from_dict({"metric_ns": "100, 10"})
    assert cfg.metric_ns == (10, 100)
    write_config(runs["comirec-sa"].parent, cfg)
    assert read_config(runs["comirec-sa"].parent).metric_ns == (10, 100)


def test_missing_optional_packages_give_clear_errors(tiny_runs, tmp_path, monkeypatch, capsys):
    import sys

    from dmirec.cli.main import main
    from dmirec.config import ConfigError
    from dmirec.training.tblog import open_writer

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if `tensorboard` were not installed
    with pytest.raises(ConfigError, match="tensorboard"):
        open_writer(tmp_path / "tb")
    _, _, runs = tiny_runs
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["report", str(runs["remi"]), "--out", str(tmp_path / "r.html")]) == 2
    assert "dmirec[report]" in capsys.readouterr().err and not (tmp_path / "r.html").exists()
