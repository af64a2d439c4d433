"""Issue 13: approximate indexes never answer short; IVF parameters are fitted to the catalogue."""

from __future__ import annotations


import numpy as np
import pytest

from dmirec.retrieval import FaissSearch, search
from dmirec.serving import load_bundle
from dmirec.serving.index import build_index, fit_ivf_params, make_index


def clustered(num: int = 3000, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim))
    x = centres[rng.integers(0, 30, num)] + 0.3 * rng.normal(size=(num, dim))
    return np.concatenate([np.zeros((1, dim)), x]).astype(np.float32)  # (N + 1, D)


@pytest.mark.parametrize("kind, opts", [("ivf", {"nlist": 64, "nprobe": 1}), ("hnsw", {"hnsw_m": 4, "ef_search": 8})])
def test_ann_answers_hold_n_items(kind, opts):
    items = clustered()
    index, _ = make_index(items, kind, **opts)
    rng = np.random.default_rng(1)
    q = rng.normal(size=(7, 4, items.shape[1])).astype(np.float32)  # (B, K, D)
    exclude = [rng.integers(1, len(items), 300) for _ in range(7)]
    for n, excl in ((1000, None), (2500, exclude), (len(items) - 1, None)):
        res = FaissSearch(items, index).search(q, n, exclude=excl)
        want = [min(n, len(items) - 1 - (len(np.unique(e)) if excl is not None else 0))
                for e in (excl or [[]] * 7)]
        got = (res.ids > 0).sum(axis=1)
        assert got.tolist() == want, (kind, n)
        for row in res.ids:
            ids = row[row > 0]
            assert len(np.unique(ids)) == len(ids)


def test_exact_fallback_only_for_short_users():
    items = clustered()
    index, _ = make_index(items, "ivf", nlist=64, nprobe=64)  # visits every cell: never short
    s = FaissSearch(items, index)
    q = np.random.default_rng(2).normal(size=(5, 4, items.shape[1])).astype(np.float32)
    a = s.search(q, 100)
    assert s.exact_fallbacks == 0
    b = search(q, items, 100, backend="faiss")
    assert np.array_equal(a.ids, b.ids)


def test_ivf_defaults_fit_the_catalogue():
    nlist, nprobe, notes = fit_ivf_params(10_000, None, None, None)
    assert nlist == 10_000 // 39 and nprobe == 32 and notes
    assert fit_ivf_params(1_000_000, None, None, None)[:2] == (1024, 32)
    with pytest.raises(ValueError, match="use --nlist <= 76"):
        fit_ivf_params(3000, 5000, None, None)
    _, _, notes = fit_ivf_params(3000, 200, 8, None)
    assert "fewer than 39" in notes[0]


def test_ivf_default_build_on_small_catalogue_has_good_recall(tmp_path):
    items = clustered(num=4000)
    index, params = make_index(items, "ivf")
    assert params["nlist"] == 4000 // 39 and "chosen" in params
    rng = np.random.default_rng(3)
    q = items[rng.integers(1, len(items), 50)][:, None, :] + 0.1 * rng.normal(size=(50, 2, items.shape[1]))
    q = q.astype(np.float32)
    a = FaissSearch(items, index).search(q, 50)
    b = search(q, items, 50, backend="faiss")
    recall = np.mean([len(set(x) & set(y)) / 50 for x, y in zip(a.ids, b.ids)])
    assert recall > 0.9


def test_bundle_recommend_with_index_holds_n(tmp_path, tiny_serving_run):
    from dmirec.serving.export import export_bundle

    bundle_dir = tmp_path / "b"
    export_bundle(tiny_serving_run[1], bundle_dir, query_sample=20)
    build_index(bundle_dir, "ivf", nlist=5, nprobe=1, verbose=False)
    b = load_bundle(bundle_dir)
    got = b.recommend(b.item_ids[:3], n=150, exclude_history=True)
    assert len(got["items"]) == 150
    got = b.recommend(b.item_ids[:3], n=1000, exclude_history=True)
    assert len(got["items"]) == b.num_items - 3


def test_batch_with_index_holds_n(tmp_path, tiny_serving_run):
    import pandas as pd

    from dmirec.serving.export import export_bundle
    from dmirec.serving.batch import recommend_batch

    bundle_dir = tmp_path / "b"
    export_bundle(tiny_serving_run[1], bundle_dir, query_sample=20)
    build_index(bundle_dir, "hnsw", hnsw_m=4, ef_search=4, verbose=False)
    ids = load_bundle(bundle_dir, verify=False).item_ids
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},{ids[(7 * u + k) % len(ids)]},{k}\n"
                                                          for u in range(20) for k in range(6)))
    recommend_batch(bundle_dir, log, tmp_path / "o.parquet", n=190, exclude_history=True, progress=False)
    counts = pd.read_parquet(tmp_path / "o.parquet").groupby("user").size()
    assert len(counts) == 20 and (counts == min(190, len(ids) - 6)).all()
