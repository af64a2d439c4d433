"""Export to a serving bundle, load it back, refuse corrupted or unsupported bundles, build indexes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dmirec.data.dataset import load_dataset
from dmirec.data.sampler import eval_split
from dmirec.retrieval import search
from dmirec.runs.rundir import load_trained_model
from dmirec.serving import BundleError, load_bundle, read_manifest, verify_bundle
from dmirec.serving.bundle import FORMAT_VERSION, REQUIRED_FILES, sha256_file
from dmirec.serving.export import export_bundle
from dmirec.serving.index import build_index



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tiny_serving_run):
    return tiny_serving_run


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(run[1], bundle, query_sample=40)
    return bundle


@pytest.fixture
def bundle_copy(exported, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(exported, dst)
    return dst


def test_round_trip_same_vectors_and_scores(run, exported):
    data_dir, run_dir = run
    model, cfg = load_trained_model(run_dir)
    data = load_dataset(data_dir)
    b = load_bundle(exported)
    assert b.num_items == data.num_items and b.item_ids == data.item_ids
    np.testing.assert_array_equal(b.item_embeddings, model.item_embeddings().detach().numpy())
    np.testing.assert_array_equal(b.popularity, data.item_popularity("train"))
    assert b.config == cfg
    ev = eval_split(data.splits["valid"], cfg.seq_len, max_users=25)
    for u in range(len(ev.history)):
        raw = [data.item_ids[i - 1] for i in ev.full_history[u]]
        with torch.no_grad():
            want = model.user_vectors(torch.from_numpy(ev.history[u:u + 1]), torch.from_numpy(ev.mask[u:u + 1]))
        np.testing.assert_allclose(b.interest_vectors(raw), want[0].numpy(), rtol=1e-5, atol=1e-6)
        ref = search(want, model.item_embeddings().detach(), 10, backend="torch")
        got = b.recommend(raw, n=10)
        assert [x["item"] for x in got["items"]] == [data.item_ids[i - 1] for i in ref.ids[0]]
        np.testing.assert_allclose([x["score"] for x in got["items"]], ref.scores[0], rtol=1e-5, atol=1e-6)
        assert [x["interest"] for x in got["items"]] == ref.interest[0].tolist()
        assert got["unknown"] == [] and got["fallback"] is False


def test_manifest_versions_and_checksums(exported):
    m = read_manifest(exported)
    assert m["format_version"] == FORMAT_VERSION
    assert m["torch_version"] == torch.__version__ and m["dmirec_version"]
    assert m["model"] == "comirec-sa" and m["num_items"] == 200 and m["embedding_dim"] == 16
    assert m["query_sample_users"] == 40 and m["index"] is None
    assert set(REQUIRED_FILES) <= set(m["files"])
    for name, entry in m["files"].items():
        assert entry["sha256"] == sha256_file(exported / name)
    queries = np.load(exported / "query_sample.npy")
    assert queries.shape == (40, m["num_interests"], 16)


@pytest.mark.parametrize("name", ["item_embeddings.npy", "model.pt", "item_ids.txt"])
def test_flipped_byte_is_refused_naming_the_file(bundle_copy, name):
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name}: checksum failed"):
        load_bundle(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "popularity.npy").unlink()
    with pytest.raises(BundleError, match=r"popularity\.npy: missing"):
        load_bundle(bundle_copy)


def test_unsupported_format_version_is_refused(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"format version 99 is not supported.*supported: 1"):
        load_bundle(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(BundleError, match="manifest.json: not valid JSON"):
        load_bundle(tmp_path)


def test_export_refuses_non_empty_target_without_overwrite(run, exported):
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(run[1], exported)


def test_flat_index_recall_one_and_same_results(bundle_copy):
    exact = load_bundle(bundle_copy)
    info = build_index(bundle_copy, "flat", verbose=False)
    assert info["recall"]["merged"] == pytest.approx(1.0) and info["recall"]["per_interest"] == pytest.approx(1.0)
    verify_bundle(bundle_copy)  # the manifest now lists the index with a valid checksum
    m = read_manifest(bundle_copy)
    assert m["index"]["kind"] == "flat" and "index.faiss" in m["files"]
    indexed = load_bundle(bundle_copy)
    assert indexed.index_kind == "flat" and indexed.metadata()["index"]["recall"]["merged"] == pytest.approx(1.0)
    history = exact.item_ids[:7]
    a, b = exact.recommend(history, 30), indexed.recommend(history, 30)
    assert [x["item"] for x in a["items"]] == [x["item"] for x in b["items"]]
    np.testing.assert_allclose([x["score"] for x in a["items"]], [x["score"] for x in b["items"]], rtol=1e-5)


@pytest.mark.parametrize("kind, opts", [("hnsw", {"hnsw_m": 16, "ef_search": 64}),
                                        ("ivf", {"nlist": 8, "nprobe": 8})])
def test_ann_index_recall_stored_and_served(bundle_copy, kind, opts, capsys):
    info = build_index(bundle_copy, kind, recall_n=20, **opts)
    out = capsys.readouterr().out
    assert f"built {kind} index" in out and "recall@20 vs exact search on 40 sample users" in out
    r = read_manifest(bundle_copy)["index"]["recall"]
    assert r["n"] == 20 and r["users"] == 40 and 0.0 <= r["merged"] <= 1.0
    assert r["merged"] > 0.95  # 200 items: hnsw with ef 64 / ivf visiting every cell are exact
    for key, value in opts.items():
        assert info["params"][key] == value
    b = load_bundle(bundle_copy)
    assert b.index_kind == kind
    got = b.recommend(b.item_ids[:5], n=10)
    assert len(got["items"]) == 10 and not got["fallback"]


def test_index_file_corruption_detected(bundle_copy):
    build_index(bundle_copy, "hnsw", verbose=False)
    path = bundle_copy / "index.faiss"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"index\.faiss: checksum failed"):
        load_bundle(bundle_copy)


def test_bad_index_options(bundle_copy):
    with pytest.raises(ValueError, match="nlist"):
        build_index(bundle_copy, "ivf", nlist=10_000, verbose=False)
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(bundle_copy, "lsh", verbose=False)


def test_interest_vectors_of_unknown_history(exported):
    b = load_bundle(exported)
    with pytest.raises(ValueError, match="no item of the catalogue"):
        b.interest_vectors(["nope"])
    assert b.interest_vectors(["nope", b.item_ids[3]]).shape == (4, 16)
