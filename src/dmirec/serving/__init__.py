"""Serving: the exported bundle, its faiss index, an HTTP service and batch candidates.

    from dmirec.serving import load_bundle
    bundle = load_bundle("bundles/beauty")
    bundle.recommend(["B0001", "B0002"], n=50, exclude_history=False)  # -> {"items", "unknown", "fallback"}
    bundle.interest_vectors(["B0001", "B0002"])                         # -> (K, D) float32

Modules: :mod:`.bundle` (bundle format, loading, recommending), :mod:`.index` (faiss index build
and recall measurement), :mod:`.app` (FastAPI app and ``run_server``), :mod:`.batch` (candidates
for every user of a log). ``serve`` uses models, retrieval and the bundle, never training code;
FastAPI is imported only by :mod:`.app`.
"""

from .bundle import (
    FORMAT_VERSION,
    SUPPORTED_FORMAT_VERSIONS,
    Bundle,
    BundleError,
    load_bundle,
    read_manifest,
    verify_bundle,
    write_bundle,
)

__all__ = [
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "Bundle",
    "BundleError",
    "load_bundle",
    "read_manifest",
    "verify_bundle",
    "write_bundle",
    "build_index",
    "create_app",
    "run_server",
    "recommend_batch",
]


def __getattr__(name):  # lazy: keep `import dmirec.serving` free of FastAPI and faiss index code
    if name == "build_index":
        from .index import build_index

        return build_index
    if name in ("create_app", "run_server"):
        from . import app

        return getattr(app, name)
    if name == "recommend_batch":
        from .batch import recommend_batch

        return recommend_batch
    raise AttributeError(f"module 'dmirec.serving' has no attribute {name!r}")
