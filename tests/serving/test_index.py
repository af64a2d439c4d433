"""Index kinds through faiss.index_factory strings under an IDMap2: every kind's labels are the item
ids (no offset), through a write/read round trip; a bundle index from before the id map still loads."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from dmirec.retrieval import FaissSearch, search
from dmirec.serving.bundle import load_faiss_index
from dmirec.serving.index import FACTORY, KINDS, build_index, make_index

OPTS = {"flat": {}, "hnsw": {"hnsw_m": 8, "ef_search": 300}, "ivf": {"nlist": 8, "nprobe": 8},
        "ivfpq": {"nlist": 4, "nprobe": 4, "pq_m": 8}}


def unit_items(num: int = 600, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(num, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # each item is its own nearest under inner product
    return np.concatenate([np.zeros((1, dim)), x]).astype(np.float32)  # (N + 1, D)


def test_every_kind_has_a_factory_string():
    assert set(FACTORY) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips_the_item_ids(tmp_path, kind):
    items = unit_items()
    num = len(items) - 1
    index, params = make_index(items, kind, **OPTS[kind])
    assert isinstance(index, faiss.IndexIDMap2) and index.ntotal == num
    assert params["factory"] == FACTORY[kind].format(**params)
    assert np.array_equal(np.sort(faiss.vector_to_array(index.id_map)), np.arange(1, num + 1))
    path = tmp_path / "index.faiss"
    faiss.write_index(index, str(path))
    loaded = load_faiss_index(path, {"kind": kind, "params": params})
    want = np.arange(1, num + 1)
    for idx in (index, loaded):
        _, labels = idx.search(items[1:], 1)  # (N, 1): each item's own vector as the query
        found = labels[:, 0] == want
        assert found.mean() >= (0.9 if kind == "ivfpq" else 1.0), kind  # PQ scores are approximate
        assert labels.min() >= 1 and labels.max() <= num  # never the padding row, never an offset id
    # through the multi-interest search: the same item ids as exact search for the exact kinds
    q = items[np.random.default_rng(1).integers(1, num + 1, 12)].reshape(6, 2, -1)  # (B, K, D)
    got = FaissSearch(items, loaded).search(q, 5)
    assert got.ids.min() >= 1
    if kind != "ivfpq":  # the same items (their order among near-equal scores may differ by rounding)
        exact = search(q, items, 5)
        assert [set(a) for a in got.ids.tolist()] == [set(b) for b in exact.ids.tolist()]


def test_ivfpq_refuses_what_it_cannot_train():
    with pytest.raises(ValueError, match="pq_m=5 must divide the embedding size 16"):
        make_index(unit_items(), "ivfpq", pq_m=5)
    with pytest.raises(ValueError, match="cannot train codebooks of 256"):
        make_index(unit_items(num=200), "ivfpq")


def test_a_bundle_index_from_before_the_id_map_still_loads(tmp_path, tiny_serving_run):
    from dmirec.serving.export import export_bundle
    from dmirec.serving import load_bundle
    from dmirec.serving.bundle import INDEX_FILE, file_entry, write_manifest

    bundle_dir = tmp_path / "b"
    export_bundle(tiny_serving_run[1], bundle_dir, query_sample=20)
    build_index(bundle_dir, "flat", verbose=False)
    bundle = load_bundle(bundle_dir)
    history = bundle.item_ids[:5]
    want = bundle.recommend(history, n=10)
    # the old layout: a plain inner-product index, items 1..N under faiss ids 0..N-1
    old = faiss.IndexFlatIP(bundle.dim)
    old.add(np.ascontiguousarray(bundle.item_embeddings[1:], dtype=np.float32))
    faiss.write_index(old, str(bundle_dir / INDEX_FILE))
    manifest = dict(bundle.manifest)
    manifest["files"] = {**manifest["files"], INDEX_FILE: file_entry(bundle_dir / INDEX_FILE)}
    write_manifest(bundle_dir, manifest)
    again = load_bundle(bundle_dir)
    assert not isinstance(again.index, faiss.IndexIDMap)
    assert [x["item"] for x in again.recommend(history, n=10)["items"]] == [x["item"] for x in want["items"]]
