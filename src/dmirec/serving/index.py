"""``dmirec index BUNDLE --kind flat|hnsw|ivf|ivfpq``: a faiss index over a bundle's item embeddings.

Each kind is a ``faiss.index_factory`` string (:data:`FACTORY`, recorded in the manifest as
``params["factory"]``) built under an ``IDMap2`` with the inner-product metric, the items added
under their own ids 1..N (:func:`dmirec.retrieval.faiss_search.item_index` / ``add_items``), so
a label is an item id. Building it also measures what it loses:
recall@N of the approximate top-N against exact search, on the bundle's sample of validation
users' interest vectors, both per interest query and after the multi-interest merge that serving
performs. The measured recall, the parameters and the build time are stored in the manifest
(``manifest["index"]``) with the index file's checksum, and printed, so nobody serves an index
without knowing what it costs in recall.

Kinds and their knobs:

* ``flat`` (``"Flat"``): exact (recall 1 up to ties), linear in N per query.
* ``hnsw`` (``"HNSW{hnsw_m}"``): a graph (``hnsw_m`` links per node, ``ef_construction``, ``ef_search``).
* ``ivfpq`` (``"IVF{nlist},PQ{pq_m}"``): ``ivf`` with each vector compressed to ``pq_m`` bytes
  (``pq_m`` sub-vectors of 256 centroids each; ``pq_m`` divides D, 8 by default): scores are
  approximate, memory D * 4 / ``pq_m`` times smaller. Its codebooks need at least 256 training items.
* ``ivf`` (``"IVF{nlist},Flat"``): an inner-product coarse quantizer (``nlist`` k-means cells
  trained on at most ``train_size`` items, ``nprobe`` cells visited per query). k-means needs
  about ``MIN_POINTS_PER_CELL`` (39, faiss' own threshold) training items per cell: without an
  explicit ``nlist`` it is chosen to fit the catalogue (at most 1024; ``nprobe`` 32 or ``nlist``
  when smaller); an explicit ``nlist`` the catalogue cannot train is
  refused (one with fewer than 39 items per cell is built with a warning).

Whatever the index, a user for whom it finds fewer than n items is answered by exact search
(see :class:`dmirec.retrieval.FaissSearch`), so answers never come back short.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..util.atomic import atomic_write, naming_write_errors
from ..retrieval import merge_candidates
from ..retrieval.faiss_search import add_items, inner_index, item_index, set_search_params
from .bundle import (INDEX_FILE, Bundle, BundleError, faiss_version, file_entry, load_faiss_index,
                     write_manifest)

KINDS = ("flat", "hnsw", "ivf", "ivfpq")
FACTORY = {"flat": "Flat", "hnsw": "HNSW{hnsw_m}", "ivf": "IVF{nlist},Flat", "ivfpq": "IVF{nlist},PQ{pq_m}"}
DEFAULTS = {"hnsw_m": 32, "ef_construction": 200, "ef_search": 128, "nlist": 1024, "nprobe": 32, "pq_m": 8}
MIN_POINTS_PER_CELL = 39  # faiss warns below this many training points per k-means centroid
PQ_CENTROIDS = 256  # 8-bit codes: each sub-quantizer is k-means with 256 centroids


def fit_ivf_params(num: int, nlist: int | None, nprobe: int | None, train_size: int | None
                   ) -> tuple[int, int, list[str]]:
    """(nlist, nprobe, notes) for an IVF index over ``num`` items: defaults sized to the
    catalogue; explicit values that cannot work are a ValueError saying what would."""
    notes: list[str] = []
    trainable = min(num, int(train_size)) if train_size else num
    largest = max(1, trainable // MIN_POINTS_PER_CELL)
    if nlist is None:
        nlist = min(DEFAULTS["nlist"], largest)
        if nlist != DEFAULTS["nlist"]:
            notes.append(f"nlist {nlist} (not the default {DEFAULTS['nlist']}): {trainable} training items "
                         f"train at most {largest} cells at {MIN_POINTS_PER_CELL} items per cell")
    elif not 1 <= nlist <= trainable:
        raise ValueError(f"ivf: nlist={nlist} does not fit this catalogue: {trainable} training items cannot "
                         f"train {nlist} cells; use --nlist <= {largest} ({MIN_POINTS_PER_CELL} items per cell) "
                         f"or leave --nlist out to have it chosen")
    elif nlist > largest:
        notes.append(f"nlist {nlist} has fewer than {MIN_POINTS_PER_CELL} training items per cell "
                     f"({trainable} items); k-means may place cells poorly: --nlist <= {largest} is safer")
    if nprobe is None:
        nprobe = min(nlist, DEFAULTS["nprobe"])
        if nprobe != DEFAULTS["nprobe"]:
            notes.append(f"nprobe {nprobe} (the default {DEFAULTS['nprobe']} is more than nlist)")
    elif not 1 <= nprobe <= nlist:
        raise ValueError(f"ivf needs 1 <= nprobe <= nlist ({nlist}), got nprobe={nprobe}")
    return int(nlist), int(nprobe), notes


def make_index(items: np.ndarray, kind: str, *, hnsw_m: int = DEFAULTS["hnsw_m"],
               ef_construction: int = DEFAULTS["ef_construction"], ef_search: int = DEFAULTS["ef_search"],
               nlist: int | None = None, nprobe: int | None = None, train_size: int | None = None,
               pq_m: int = DEFAULTS["pq_m"], seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Build an inner-product index over ``items[1:]`` ((N + 1, D), row 0 = padding), labels = item ids.

    Returns the index and the parameters that define it (stored in the manifest), its factory
    string among them.
    """
    x = np.ascontiguousarray(items[1:], dtype=np.float32)  # (N, D)
    num, dim = x.shape
    if num == 0:
        raise BundleError("the catalogue is empty: nothing to index")
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {KINDS}")
    params: dict[str, Any] = {}
    if kind == "hnsw":
        if hnsw_m < 2 or ef_construction < 1 or ef_search < 1:
            raise ValueError("hnsw needs hnsw_m >= 2, ef_construction >= 1 and ef_search >= 1")
        params = {"hnsw_m": int(hnsw_m), "ef_construction": int(ef_construction), "ef_search": int(ef_search)}
    elif kind in ("ivf", "ivfpq"):
        notes: list[str] = []
        if kind == "ivfpq":
            if pq_m < 1 or dim % pq_m:
                raise ValueError(f"ivfpq: pq_m={pq_m} must divide the embedding size {dim}")
            trainable = min(num, int(train_size)) if train_size else num
            if trainable < PQ_CENTROIDS:
                raise ValueError(f"ivfpq: {trainable} training items cannot train codebooks of {PQ_CENTROIDS} "
                                 f"centroids; use ivf or hnsw")
        nlist, nprobe, notes = fit_ivf_params(num, nlist, nprobe, train_size)
        size = min(num, int(train_size) if train_size else max(64 * int(nlist), 10_000))
        params = {"nlist": int(nlist), "nprobe": int(nprobe), "train_size": int(size), "seed": int(seed)}
        if kind == "ivfpq":
            params["pq_m"] = int(pq_m)
        if notes:
            params["chosen"] = "; ".join(notes)
    spec = FACTORY[kind].format(**params)
    index = item_index(spec, dim)
    inner = inner_index(index)
    if kind == "hnsw":
        inner.hnsw.efConstruction = int(ef_construction)
    if kind in ("ivf", "ivfpq"):
        inner.cp.seed = int(seed)
        if kind == "ivfpq":
            inner.pq.cp.seed = int(seed)
        rng = np.random.default_rng(seed)
        size = params["train_size"]
        sample = x if size >= num else x[np.sort(rng.choice(num, size=size, replace=False))]  # (T, D)
        index.train(np.ascontiguousarray(sample))
    set_search_params(index, params)
    add_items(index, items)
    return index, {"factory": spec, **params}


def measure_recall(index: Any, items: np.ndarray, queries: np.ndarray, n: int = 50,
                   latency_users: int = 200) -> dict[str, Any]:
    """Recall@n of ``index`` against exact inner-product search, on (S, K, D) query vectors.

    ``per_interest``: mean over the S*K interest vectors of |approx top-n ∩ exact top-n| / n.
    ``merged``: the same for each user's merged, de-duplicated top-n (what serving returns).
    Also the mean and p99 single-user search time (K queries, one faiss thread).
    """
    e = np.ascontiguousarray(items[1:], dtype=np.float32)  # (N, D)
    q = np.ascontiguousarray(queries, dtype=np.float32)  # (S, K, D)
    users, k, dim = q.shape
    num = e.shape[0]
    n_eff = min(int(n), num)
    if users == 0:
        return {"n": int(n), "users": 0, "queries": 0, "per_interest": None, "merged": None}
    flat_q = q.reshape(users * k, dim)  # (S*K, D)
    exact = add_items(item_index("Flat", dim), items)
    ex_sc, ex_lab = exact.search(flat_q, n_eff)  # (S*K, n) each, item ids
    ap_sc, ap_lab = index.search(flat_q, n_eff)  # (S*K, n) each, item ids

    def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per row, |set(a) ∩ set(b)| over valid (>= 0) entries; rows hold distinct ids."""
        big = num + 1
        rows = np.arange(a.shape[0])[:, None]  # (R, 1)
        ka = np.where(a >= 0, rows * big + a, -1).ravel()
        kb = np.where(b >= 0, rows * big + b, -2).ravel()
        hit = np.isin(ka, kb).reshape(a.shape)  # (R, n)
        return hit.sum(axis=1)

    per_interest = overlap(ap_lab, ex_lab) / np.maximum((ex_lab >= 0).sum(axis=1), 1)  # (S*K,)

    def merged(sc: np.ndarray, lab: np.ndarray) -> np.ndarray:
        ids = np.where(lab > 0, lab, -1).reshape(users, k * n_eff)  # (S, K*n)
        it = np.broadcast_to(np.repeat(np.arange(k), n_eff), (users, k * n_eff))  # (S, K*n)
        return merge_candidates(ids, sc.reshape(users, k * n_eff), it, n_eff).ids  # (S, n)

    m_ex, m_ap = merged(ex_sc, ex_lab), merged(ap_sc, ap_lab)
    merged_recall = overlap(m_ap, m_ex) / np.maximum((m_ex >= 0).sum(axis=1), 1)  # (S,)

    times = []
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as served: one request per thread
    try:
        for u in range(min(users, latency_users)):
            t0 = time.perf_counter()
            index.search(q[u], n_eff)
            times.append(time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(before)
    times_ms = np.asarray(times) * 1e3
    return {
        "n": int(n),
        "users": int(users),
        "queries": int(users * k),
        "per_interest": float(per_interest.mean()),
        "merged": float(merged_recall.mean()),
        "merged_min": float(merged_recall.min()),
        "search_ms_mean": float(times_ms.mean()),
        "search_ms_p99": float(np.percentile(times_ms, 99)),
    }


def _write_index(index, path: str) -> None:
    """The index through Python's file layer, flushed to disk: a failed write (a full disk) is an
    ``OSError`` with its cause (named by the caller), not a faiss traceback."""
    data = faiss.serialize_index(index)  # (bytes,) uint8
    with open(path, "wb") as fh:
        fh.write(memoryview(data))
        fh.flush()
        os.fsync(fh.fileno())


def build_index(bundle_dir: str | Path, kind: str = "hnsw", *, recall_n: int = 50, threads: int | None = None,
                verbose: bool = True, **options: Any) -> dict[str, Any]:
    """Build a ``kind`` index for the bundle, measure its recall, store both; returns the index info.

    ``options``: ``hnsw_m``, ``ef_construction``, ``ef_search`` (hnsw); ``nlist``, ``nprobe``,
    ``train_size``, ``seed`` (ivf, ivfpq); ``pq_m`` (ivfpq). ``threads`` sets faiss' OpenMP threads for the build.
    The info is ``manifest["index"]``: kind, file, params, recall (see :func:`measure_recall`),
    build_seconds, faiss_version.
    """
    bundle_dir = Path(bundle_dir)
    unknown = set(options) - set(DEFAULTS) - {"train_size", "seed"}
    if unknown:
        raise TypeError(f"build_index: unknown options {sorted(unknown)}")
    options = {k: v for k, v in options.items() if v is not None}
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {KINDS}")
    if threads:
        faiss.omp_set_num_threads(int(threads))
    bundle = Bundle(bundle_dir, load_model=False, use_index=False)  # verifies checksums
    items = bundle.item_embeddings  # (N + 1, D)
    t0 = time.perf_counter()
    index, params = make_index(items, kind, **options)
    build_seconds = time.perf_counter() - t0
    recall = measure_recall(index, items, bundle.query_sample, recall_n)
    info = {"kind": kind, "file": INDEX_FILE, "params": params, "metric": "inner_product",
            "recall": recall, "build_seconds": round(build_seconds, 3), "faiss_version": faiss_version(),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    # the new index is written beside the old one (a name the bundle's check ignores), then the manifest,
    # then the rename: a write that fails (a full disk) leaves the bundle as it was
    pending = bundle_dir / f".{INDEX_FILE}.{os.getpid()}.tmp"
    try:
        with naming_write_errors(bundle_dir / INDEX_FILE):
            _write_index(index, str(pending))
        manifest = dict(bundle.manifest)
        manifest["files"] = {**manifest["files"], INDEX_FILE: file_entry(pending)}
        manifest["index"] = info
        with naming_write_errors(bundle_dir / "manifest.json"):
            write_manifest(bundle_dir, manifest)
        os.replace(pending, bundle_dir / INDEX_FILE)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    if verbose:
        print(format_index_report(info, bundle.num_items))
        if info["params"].get("chosen"):
            print(f"note: {info['params']['chosen']}")
        if recall.get("merged") is not None and recall["merged"] < 0.9:
            print(f"warning: merged recall {recall['merged']:.3f} < 0.9 against exact search; raise "
                  f"{'--ef-search' if kind == 'hnsw' else '--nprobe'} (answers short of n items are completed by "
                  f"exact search, but the items the index misses are lost)")
    return info


def format_index_report(info: dict[str, Any], num_items: int) -> str:
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items() if k not in ("chosen", "factory")) or "exact"
    r = info["recall"]
    if r.get("users"):
        rec = (f"recall@{r['n']} vs exact search on {r['users']} sample users: {r['merged']:.4f} merged "
               f"(min {r['merged_min']:.3f}), {r['per_interest']:.4f} per interest; "
               f"search {r['search_ms_mean']:.2f} ms/user mean, {r['search_ms_p99']:.2f} ms p99 (1 thread)")
    else:
        rec = "recall not measured: the bundle holds no sample users"
    return f"built {info['kind']} index ({params}) over {num_items} items in {info['build_seconds']:.1f} s\n{rec}"


__all__ = ["KINDS", "FACTORY", "DEFAULTS", "make_index", "measure_recall", "build_index", "load_faiss_index"]
