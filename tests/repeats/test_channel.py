"""Repeat-aware retrieval: the repeat baseline, the repeat channel and the new-items view.

Hand-built histories check the rankings item by item; a 50-step ComiRec-SA run on planted data
(whose histories repeat items) checks that the channel with zero weight is the model's list, and
that serving and batch give exactly the lists evaluation measures with the channel on.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from dmirec.cli.main import main as cli_main
from dmirec.config import ConfigError
from dmirec.data.dataset import load_dataset
from dmirec.data.sampler import EvalSet, eval_split
from dmirec.evaluation.evaluate import evaluate_model, evaluate_run, new_items_view, rank_users
from dmirec.evaluation.metrics import drop_seen_targets, summarize
from dmirec.evaluation.repeat_fit import fit_repeat_run
from dmirec.models import build_model
from dmirec.repeats.channel import RepeatChannel, history_features, history_item_scores, repeat_score, retrieve
from dmirec.repeats.params import with_repeat_params
from dmirec.retrieval import make_searcher
from dmirec.runs.rundir import load_trained_model
from dmirec.serving import load_bundle
from dmirec.serving.batch import recommend_batch
from dmirec.serving.export import export_bundle
from dmirec.training.train import make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_ITEMS = 12
# popularity: item 1 the most popular, then 2, ... (item 12 the least); row 0 is padding
POPULARITY = np.r_[0, np.arange(NUM_ITEMS, 0, -1)].astype(np.int64)


def repeat_model(decay: float = 0.0):
    cfg = make_config("repeat", overrides={"repeat_decay": decay})
    return build_model(cfg, NUM_ITEMS, POPULARITY)


def hand_eval_set(histories: list[list[int]], targets: list[list[int]], seq_len: int = 4) -> EvalSet:
    hist = np.zeros((len(histories), seq_len), dtype=np.int64)
    for b, h in enumerate(histories):
        tail = h[-seq_len:]
        if tail:
            hist[b, seq_len - len(tail):] = tail
    return EvalSet(hist, hist > 0, [np.asarray(t, np.int64) for t in targets],
                   [np.asarray(h, np.int64) for h in histories], np.arange(len(histories)))


# ----------------------------------------------------------------------------------------------
# the repeat baseline


def test_history_features_count_age_and_no_padding():
    f = history_features([[3, 5, 3, 0, 7, 5, 5], [0, 0], [9]])
    assert f.indptr.tolist() == [0, 3, 3, 4]
    assert f.items.tolist() == [3, 5, 7, 9]  # the padding item 0 never counts
    assert f.count.tolist() == [2, 3, 1, 1]
    assert f.age.tolist() == [4, 0, 2, 0]  # positions since the last visit
    decayed = history_features([[3, 5, 3]], decay=np.log(2))
    np.testing.assert_allclose(decayed.count, [1 + 0.25, 0.5])  # item 3: ages 0 and 2; item 5: age 1


def test_repeat_ranking_counts_recency_ties_and_popularity_fill():
    histories = [
        [4, 7, 4, 9, 7, 11],  # 4 and 7 twice (7 visited last) -> 7, 4; then 9 and 11 once (11 last) -> 11, 9
        [6, 0, 6, 6, 2],  # padding inside a history is ignored
        [],  # nothing: most popular
    ]
    res = rank_users(repeat_model(), hand_eval_set(histories, [[1]] * 3), n=8)
    assert res.ids[0].tolist() == [7, 4, 11, 9, 1, 2, 3, 5]  # fill skips 4 (already listed)
    assert res.ids[1].tolist() == [6, 2, 1, 3, 4, 5, 7, 8]
    assert res.ids[2].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    for row in res.ids:
        assert len(set(row.tolist())) == len(row) and 0 not in row  # never repeats, never padding
    assert res.scores[0, :4].tolist() == [2, 2, 1, 1]  # history items score their visit count


def test_repeat_ranking_fill_when_the_catalogue_runs_out():
    res = rank_users(repeat_model(), hand_eval_set([list(range(1, 11))], [[1]]), n=12)
    assert res.ids[0, :10].tolist() == list(range(10, 0, -1))  # all once: the most recent first
    assert res.ids[0, 10:].tolist() == [11, 12]
    res = rank_users(repeat_model(), hand_eval_set([[1, 2, 3]], [[1]]), n=14)
    assert res.ids[0, -2:].tolist() == [-1, -1]  # 12 items in all: missing slots, no repeats


def test_repeat_time_decay_prefers_recent_visits():
    histories = [[5, 5, 1, 2, 3, 4, 8]]  # 5 twice long ago, 8 once just now
    plain = rank_users(repeat_model(0.0), hand_eval_set(histories, [[1]]), n=3)
    decayed = rank_users(repeat_model(0.5), hand_eval_set(histories, [[1]]), n=3)
    assert plain.ids[0].tolist() == [5, 8, 4]
    assert decayed.ids[0].tolist() == [8, 4, 3]  # exp(-0.5 * 5) + exp(-0.5 * 6) < exp(-0.5) < 1


def test_repeat_model_with_history_excluded_is_popularity_minus_history():
    res = rank_users(repeat_model(), hand_eval_set([[3, 3, 1]], [[2]]), n=4, exclude_history=True)
    assert res.ids[0].tolist() == [2, 4, 5, 6]


# ----------------------------------------------------------------------------------------------
# the channel on hand-built lists


def toy_retrieval(seed: int = 0, users: int = 6, items: int = 40, k: int = 3, d: int = 8):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(items + 1, d)).astype(np.float32)  # (N + 1, D)
    queries = rng.normal(size=(users, k, d)).astype(np.float32)  # (B, K, D)
    histories = [rng.integers(1, items + 1, size=rng.integers(0, 15)) for _ in range(users)]
    return queries, emb, histories


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_channel_with_zero_weight_is_the_model_list(seed):
    queries, emb, histories = toy_retrieval(seed)
    searcher = make_searcher(emb, "torch")
    want = searcher.search(queries, 10)
    for ch in (RepeatChannel(0.0), RepeatChannel(0.0, recency=2.0, bias=1.0, ref_rank=5)):
        got = retrieve(searcher.search, queries, histories, 10, stage=ch, item_embeddings=emb)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.interest, want.interest)
        np.testing.assert_array_equal(got.scores, want.scores)


def test_channel_merged_score_by_hand():
    queries, emb, histories = toy_retrieval(3)
    histories[0] = np.array([5, 9, 5])
    ch = RepeatChannel(weight=0.7, recency=1.5, bias=0.2, ref_rank=8)
    searcher = make_searcher(emb, "torch")
    got = retrieve(searcher.search, queries, histories, 40, stage=ch, item_embeddings=emb)
    full = np.einsum("kd,nd->kn", queries[0], emb).max(axis=0)  # (N + 1,) best score under the interests
    ranked = np.sort(full[1:])[::-1]
    spread = ranked[0] - ranked[7]
    bonus = {5: np.log1p(2) + 1.5 / 1 - 0.2, 9: np.log1p(1) + 1.5 / 2 - 0.2}
    merged = {i: full[i] + 0.7 * bonus.get(i, 0.0) * spread for i in range(1, 41)}
    want = sorted(merged, key=lambda i: -merged[i])
    assert got.ids[0].tolist() == want
    np.testing.assert_allclose(got.scores[0], [merged[i] for i in want], rtol=1e-5)


def test_channel_with_a_large_weight_puts_history_first_by_repeat_score():
    queries, emb, histories = toy_retrieval(4)
    ch = RepeatChannel(weight=1e4, recency=0.5)
    searcher = make_searcher(emb, "torch")
    got = retrieve(searcher.search, queries, histories, 30, stage=ch, item_embeddings=emb)
    feats = history_features(histories)
    h = repeat_score(feats, ch)
    for b, hist in enumerate(histories):
        lo, hi = feats.indptr[b], feats.indptr[b + 1]
        want = feats.items[lo:hi][np.argsort(-h[lo:hi], kind="stable")]
        assert sorted(got.ids[b, :hi - lo].tolist()) == sorted(want.tolist())
        assert np.all(np.diff(h[lo:hi][np.argsort(-h[lo:hi])]) <= 0)
        assert len(set(got.ids[b].tolist())) == 30


def test_channel_pushing_history_down_makes_room_for_new_items():
    queries, emb, histories = toy_retrieval(6)
    searcher = make_searcher(emb, "torch")
    ch = RepeatChannel(weight=1e4, bias=5.0)  # every repeat score negative: history items sink
    got = retrieve(searcher.search, queries, histories, 10, stage=ch, item_embeddings=emb)
    want = searcher.search(queries, 10, exclude=histories)  # the model's list without the history
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)


def test_history_item_scores_are_the_best_interest_scores():
    queries, emb, histories = toy_retrieval(5)
    feats = history_features(histories)
    scores, interest = history_item_scores(queries, emb, feats)
    rows = feats.rows
    full = np.einsum("bkd,hd->bkh", queries, emb)  # (B, K, N + 1)
    np.testing.assert_allclose(scores, full[rows, :, feats.items].max(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(interest, full[rows, :, feats.items].argmax(axis=1))


def test_channel_config_keys_are_checked():
    with pytest.raises(ConfigError, match="repeat_weight"):
        make_config("remi", overrides={"repeat_weight": -1})
    with pytest.raises(ConfigError, match="repeat_ref_rank"):
        make_config("remi", overrides={"repeat_ref_rank": 0})


# ----------------------------------------------------------------------------------------------
# the new-items view


def test_drop_seen_targets_by_hand():
    kept, keep = drop_seen_targets([[1, 2, 2, 5], [3, 3], [7]], [[2, 9], [3], []])
    assert [k.tolist() for k in kept] == [[1, 5], [], [7]]
    assert keep.tolist() == [True, False, True]


def test_new_items_view_by_hand():
    # most-popular ranks 1, 2, 3, ...; user 0's history holds 1 and 2, its targets 2 (a repeat) and 4
    ev = hand_eval_set([[1, 2], [3], [5]], [[2, 4], [3, 3], [1, 6]])
    view, skipped = new_items_view(ev)
    assert skipped == 1 and view.users.tolist() == [0, 2]
    model = build_model(make_config("most-popular"), NUM_ITEMS, POPULARITY)
    got = evaluate_model(model, None, ns=(2, 3), eval_set=ev, new_items_only=True)
    # user 0: candidates 3, 4, 5 (1, 2 excluded), new targets {4}: R@2 = 1; user 1 skipped (3 was
    # visited); user 2: candidates 1, 2, 3 (5 excluded), targets {1, 6}: R@2 = 0.5
    assert got["users"] == 2 and got["skipped_users"] == 1
    assert got["recall@2"] == pytest.approx((1 + 0.5) / 2)
    assert got["recall@3"] == pytest.approx((1 + 0.5) / 2)
    assert got["ndcg@2"] == pytest.approx((1 / np.log2(3) / 1 + 1 / (1 + 1 / np.log2(3))) / 2)
    published = evaluate_model(model, None, ns=(2, 3), eval_set=ev)
    assert published["users"] == 3 and "skipped_users" not in published
    assert published["recall@2"] == pytest.approx((0.5 + 0 + 0.5) / 3)  # user 0 hits 2, user 2 hits 1


# ----------------------------------------------------------------------------------------------
# a trained model: zero weight, fitting, evaluation == serving == batch


@pytest.fixture(scope="module")
def run(tiny_serving_run):
    return tiny_serving_run


def test_zero_weight_channel_measures_the_model(run):
    data_dir, run_dir = run
    model, cfg = load_trained_model(run_dir)
    data = load_dataset(data_dir)
    plain = evaluate_model(model, data, "valid", cfg.seq_len)
    zero = evaluate_model(model, data, "valid", cfg.seq_len, repeat=RepeatChannel(0.0, recency=1.0))
    on = evaluate_model(model, data, "valid", cfg.seq_len, repeat=RepeatChannel(1.0, recency=1.0))
    for key in ("recall@20", "recall@50", "ndcg@50", "hitrate@20"):
        assert zero[key] == plain[key]
    assert on["recall@50"] != plain["recall@50"]  # the planted histories repeat items: the channel acts


def test_fit_repeat_never_lowers_validation_recall(run, tmp_path):
    _, run_dir = run
    out = tmp_path / "repeat.json"
    rec = fit_repeat_run(run_dir, out)
    assert rec["chosen"]["recall@50"] >= rec["model"]["recall@50"]
    assert rec["model"]["weight"] == 0 and len(rec["grid"]) > 10
    saved = json.loads(out.read_text())
    assert saved["params"]["repeat_channel"] is True and saved["split"] == "valid"
    model, cfg = load_trained_model(run_dir)
    valid = evaluate_run(run_dir, "valid", repeat_params=out)
    assert valid["recall@50"] == pytest.approx(rec["chosen"]["recall@50"])
    assert with_repeat_params(cfg, run_dir, out).repeat_weight == rec["chosen"]["weight"]


def test_fit_repeat_cli_writes_into_the_run_and_evaluate_uses_it(run, tmp_path, capsys):
    _, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert cli_main(["fit-repeat", str(copy)]) == 0
    assert (copy / "repeat.json").exists()
    capsys.readouterr()
    assert cli_main(["evaluate", str(copy), "--split", "valid", "--json", "--both-views"]) == 0
    both = json.loads(capsys.readouterr().out)
    rec = json.loads((copy / "repeat.json").read_text())
    assert both["published"]["recall@50"] == pytest.approx(rec["chosen"]["recall@50"])
    assert both["new_items"]["users"] + both["new_items"]["skipped_users"] == both["published"]["users"]
    assert cli_main(["evaluate", str(copy), "--split", "valid", "--json", "--repeat-channel", "off"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["recall@50"] == pytest.approx(rec["model"]["recall@50"])


def test_bad_repeat_file_is_an_error_naming_it(run, tmp_path):
    _, run_dir = run
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"params": {"repeat_wieght": 1.0}}))
    with pytest.raises(ConfigError, match="bad.json.*repeat_wieght"):
        evaluate_run(run_dir, "valid", repeat_params=bad)


@pytest.fixture(scope="module")
def channel_bundle(run, tmp_path_factory):
    _, run_dir = run
    base = tmp_path_factory.mktemp("repeat_bundle")
    params = base / "repeat.json"
    params.write_text(json.dumps({"params": {"repeat_channel": True, "repeat_weight": 0.5,
                                             "repeat_recency": 1.0, "repeat_bias": 0.0}}))
    export_bundle(run_dir, base / "bundle", query_sample=10, repeat_params=params)
    return params, base / "bundle"


def test_serving_and_batch_give_what_evaluate_measures(run, channel_bundle, tmp_path):
    data_dir, run_dir = run
    params, bundle_dir = channel_bundle
    bundle = load_bundle(bundle_dir)
    assert bundle.config.repeat_channel and bundle.config.repeat_weight == 0.5
    assert bundle.metadata()["repeat"] == {"stage": "channel", "weight": 0.5, "recency": 1.0, "bias": 0.0,
                                           "decay": 0.0, "ref_rank": 50}
    model, cfg = load_trained_model(run_dir)
    data = load_dataset(data_dir)
    ev = eval_split(data.splits["test"], cfg.seq_len)
    channel = RepeatChannel(0.5, 1.0)
    want = rank_users(model, ev, 50, repeat=channel)
    plain = rank_users(model, ev, 50)
    assert (want.ids != plain.ids).any(axis=1).mean() > 0.5  # the channel changes most lists

    got, fallback = bundle.recommend_ids(ev.full_history, 50)
    assert not fallback.any()
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.interest, want.interest)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)
    measured = evaluate_run(run_dir, "test", repeat_params=params)
    from_serving = summarize(got.ids, ev.targets)
    assert from_serving == {k: measured[k] for k in from_serving}

    one = bundle.recommend([data.item_ids[i - 1] for i in ev.full_history[0]], n=50)  # the HTTP answer
    assert [x["item"] for x in one["items"]] == [data.item_ids[i - 1] for i in want.ids[0]]

    rows = [(f"user{u}", data.item_ids[i - 1], t) for u, hist in enumerate(ev.full_history)
            for t, i in enumerate(hist)]
    log = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(log, index=False)
    out = tmp_path / "cand.parquet"
    recommend_batch(bundle, log, out, n=50, chunk_users=7, progress=False)
    cand = pd.read_parquet(out)
    for u in range(len(ev.full_history)):
        items = cand.loc[cand["user"] == f"user{u}", "item"].tolist()
        assert items == [data.item_ids[i - 1] for i in want.ids[u]]


def test_repeat_model_trains_evaluates_and_serves(tmp_path):
    from dmirec.data.synthetic import make_planted_dataset
    from dmirec.training.train import train

    data_dir = make_planted_dataset(tmp_path / "data", num_users=300, num_items=100, num_clusters=5)
    result = train(make_config("repeat", overrides={"progress": False, "device": "cpu"}), data_dir, tmp_path / "run")
    assert result["stopped"] == "nothing to train"
    popular = train(make_config("most-popular", overrides={"progress": False, "device": "cpu"}), data_dir,
                    tmp_path / "pop")
    assert result["test"]["recall@20"] > popular["test"]["recall@20"]  # planted histories repeat items
    export_bundle(tmp_path / "run", tmp_path / "bundle", query_sample=5)
    bundle = load_bundle(tmp_path / "bundle")
    model, cfg = load_trained_model(tmp_path / "run")
    data = load_dataset(data_dir)
    ev = eval_split(data.splits["test"], cfg.seq_len)
    want = rank_users(model, ev, 50)
    got, _ = bundle.recommend_ids(ev.full_history, 50)
    np.testing.assert_array_equal(got.ids, want.ids)
    assert summarize(got.ids, ev.targets)["recall@50"] == pytest.approx(result["test"]["recall@50"])
    # the merge itself is stateless: the same hand-made merge from scratch gives the same list
    feats = history_features(ev.full_history)
    assert got.ids[0, 0] in feats.items[feats.indptr[0]:feats.indptr[1]]


def test_new_items_only_config_key_drives_training_validation_and_test(tmp_path):
    from dmirec.data.synthetic import make_planted_dataset
    from dmirec.training.train import train

    data_dir = make_planted_dataset(tmp_path / "data", num_users=200, num_items=60, num_clusters=3)
    cfg = make_config("most-popular", overrides={"progress": False, "device": "cpu", "new_items_only": True})
    result = train(cfg, data_dir, tmp_path / "run")
    want = evaluate_run(tmp_path / "run", "test", new_items_only=True)
    assert result["test"]["skipped_users"] == want["skipped_users"]
    assert result["test"]["recall@50"] == pytest.approx(want["recall@50"])
    published = evaluate_run(tmp_path / "run", "test", new_items_only=False)
    assert "skipped_users" not in published and published["users"] == want["users"] + want["skipped_users"]
