"""``dmirec serve BUNDLE --port 8000``: the HTTP recommendation service (FastAPI under uvicorn).

Endpoints:

* ``POST /recommend`` with ``{"history": ["raw id", ... oldest first], "n": 50, "exclude_history": false}``
  returns ``{"items": [{"item": "raw id", "score": float, "interest": k}, ...], "unknown": [...],
  "fallback": false}``. The last ``seq_len`` known items of the history are the model input;
  unknown ids are dropped and listed (distinct, first-seen order); an empty or all-unknown
  history gets the most popular items with ``"fallback": true`` (score = training count,
  interest = -1). ``n`` is 1..1000; ``history`` holds at most 10,000 ids of at most 1,024
  characters; unknown keys are rejected. Invalid bodies get 422 with the reason.
* ``GET /health``: ``{"status": "ok", ...}`` once the bundle is loaded.
* ``GET /metadata``: model, dataset, catalogue size, index kind and its measured recall, versions.

Concurrency: ``/recommend`` is a plain (sync) endpoint, so FastAPI runs each call in its worker
threadpool and requests never block the event loop or each other; the model runs under
``torch.inference_mode`` and faiss/torch release the GIL while they compute. :func:`run_server`
sets torch's and faiss' intra-op threads to ``threads`` (default 1): for one small request at a
time, parallelism comes from concurrent requests, not from splitting one tiny matmul.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .bundle import Bundle, load_bundle

MAX_N = 1000
MAX_HISTORY = 10_000
MAX_ID_LENGTH = 1024

RawId = Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[RawId] = Field(..., max_length=MAX_HISTORY,
                                 description="raw item ids, oldest first; unknown ids are dropped and listed")
    n: int = Field(50, ge=1, le=MAX_N, strict=True, description=f"number of items to return (1..{MAX_N})")
    exclude_history: bool = Field(False, strict=True, description="never return items of the history")


class RecommendedItem(BaseModel):
    item: str = Field(description="raw item id")
    score: float = Field(description="inner product with the best interest (popularity count on fallback)")
    interest: int = Field(description="interest 0..K-1 that retrieved the item; -1 on fallback")


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    unknown: list[str] = Field(description="history ids not in the catalogue (dropped)")
    fallback: bool = Field(description="true when no history item is known: most popular items")


class Health(BaseModel):
    status: str
    catalogue_size: int
    index: str


_thread_state = threading.local()


def _set_worker_threads(threads: int) -> None:
    """faiss' OpenMP thread count is per calling thread: set it once in each worker thread."""
    if getattr(_thread_state, "faiss_threads", None) != threads:
        import faiss

        faiss.omp_set_num_threads(threads)
        _thread_state.faiss_threads = threads


def create_app(bundle: Bundle | str | Path, *, threads: int | None = None) -> FastAPI:
    """The FastAPI app serving ``bundle`` (a loaded :class:`Bundle` or a bundle folder).

    ``threads``: faiss OpenMP threads per request (set in every worker thread; torch's intra-op
    setting is process-wide, see :func:`configure_threads`); None leaves them as they are.
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    meta = bundle.metadata()
    meta["limits"] = {"n_min": 1, "n_max": MAX_N, "history_max": MAX_HISTORY, "id_max_length": MAX_ID_LENGTH}
    app = FastAPI(title="dmirec recommendation service", version=meta["versions"]["serving"]["dmirec"],
                  description="Multi-interest candidate retrieval over an exported dmirec bundle.")
    app.state.bundle = bundle

    @app.exception_handler(StarletteHTTPException)
    async def body_errors_are_422(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers 400 for a body it cannot decode at all (e.g. invalid UTF-8); our
        # endpoints raise no 400 themselves, so report it like every other invalid body.
        if exc.status_code == 400 and request.method == "POST":
            detail = [{"type": "body_not_decodable", "loc": ["body"], "msg": "the body is not UTF-8 JSON text",
                       "input": None}]
            return JSONResponse({"detail": detail}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(req: RecommendRequest) -> Response:
        if threads is not None:
            _set_worker_threads(threads)
        out = bundle.recommend(req.history, req.n, req.exclude_history)
        return Response(json.dumps(out, separators=(",", ":")), media_type="application/json")

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        return {"status": "ok", "catalogue_size": bundle.num_items, "index": bundle.index_kind}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return meta

    return app


def configure_threads(threads: int = 1) -> None:
    """Set torch's intra-op threads (process-wide) and faiss' OpenMP threads for the calling
    thread (OpenMP keeps that setting per thread, hence the per-worker setting in :func:`create_app`)."""
    import faiss
    import torch

    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def run_server(bundle_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, *, threads: int = 1,
               log_level: str = "info", access_log: bool = False, device: str = "cpu") -> None:
    """Load the bundle (checksums verified) and serve it with uvicorn until interrupted."""
    import uvicorn

    configure_threads(threads)
    bundle = load_bundle(bundle_dir, device=device)
    app = create_app(bundle, threads=max(1, int(threads)))
    print(f"serving {bundle.manifest.get('model')} over {bundle.num_items} items "
          f"(index: {bundle.index_kind}) on http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=int(port), log_level=log_level, access_log=access_log)


def serve_cmd(args) -> int:
    """CLI entry: ``args.bundle_dir``, ``args.port``; optional ``host``, ``threads``, ``log_level``, ``access_log``."""
    run_server(args.bundle_dir, getattr(args, "host", None) or "127.0.0.1", args.port,
               threads=getattr(args, "threads", None) or 1, log_level=getattr(args, "log_level", None) or "info",
               access_log=bool(getattr(args, "access_log", False)), device=getattr(args, "device", None) or "cpu")
    return 0


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m dmirec.serve.app", description="Serve a dmirec bundle over HTTP.")
    p.add_argument("bundle_dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true")
    return serve_cmd(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(_main())
