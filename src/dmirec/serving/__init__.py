"""Serving: the exported bundle, its faiss index, an HTTP service and batch candidates.

    from dmirec.serving import load_bundle
    bundle = load_bundle("bundles/beauty")
    bundle.recommend(["B0001", "B0002"], n=50, exclude_history=False)  # -> {"items", "unknown", "fallback"}
    bundle.interest_vectors(["B0001", "B0002"])                         # -> (K, D) float32

Modules: :mod:`.bundle` (bundle format, loading, recommending), :mod:`.index` (faiss index build
and recall measurement), :mod:`.app` (FastAPI app and ``run_server``), :mod:`.batch` (candidates
for every user of a log). ``serve`` uses models, retrieval and the bundle, never training code;
FastAPI (the ``serve`` extra) is imported only by :mod:`.app`, on first use.
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
from .batch import recommend_batch
from .index import build_index

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


def __getattr__(name):  # lazy: FastAPI is the optional `serve` extra; `import dmirec.serving` works without it
    if name in ("create_app", "run_server"):
        from . import app  # local: FastAPI is the optional `serve` extra

        return getattr(app, name)
    raise AttributeError(f"module 'dmirec.serving' has no attribute {name!r}")
