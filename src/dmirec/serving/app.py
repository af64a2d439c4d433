"""``dmirec serve BUNDLE --port 8000``: the HTTP recommendation service (FastAPI under uvicorn).

Endpoints:

* ``POST /recommend`` with ``{"history": ["raw id", ... oldest first], "n": 50, "exclude_history": false}``
  returns ``{"items": [{"item": "raw id", "score": float, "interest": k}, ...], "unknown": [...],
  "fallback": false}``. Raw ids are strings; integer ids are taken as the strings they print as
  (``6413`` is ``"6413"``). The last ``seq_len`` known items of the history are the model input;
  unknown ids are dropped and listed (distinct, first-seen order); an empty or all-unknown
  history gets the most popular items with ``"fallback": true`` (score = training count,
  interest = -1). ``n`` is 1..1000; ``history`` holds at most 10,000 ids of at most 1,024
  characters; unknown keys are rejected. Invalid bodies get 422 with the reason.
* ``GET /health``: ``{"status": "ok", ...}`` once the bundle is loaded.
* ``GET /metadata``: model, dataset, catalogue size, index kind and its measured recall, versions.

Errors are always JSON that serialises: a validation error lists ``type``, ``loc`` and ``msg``
per problem (at most ``MAX_ERRORS``), never the input itself (bodies may hold 10,000 ids, NaN,
Infinity or lone surrogates, which cannot be echoed). Ids must be valid Unicode text (a lone
surrogate is a 422).

Limits (:class:`ServingLimits`, an ASGI middleware): at most ``max_inflight`` requests are in
progress (running or queued for a worker thread); one more gets **503** with ``Retry-After`` at
once instead of an unbounded queue. A request body must arrive within ``body_timeout`` seconds
(else **408**) and hold at most ``MAX_BODY_BYTES`` (else **413**); both close the connection.
``GET /health`` is never limited. A request counts as in progress once its body has arrived.

Connections (:mod:`dmirec.serving.guard`): request headers must arrive within ``header_timeout``
seconds of opening a connection or of its last response; idle keep-alive connections close after
``keep_alive`` seconds (uvicorn's ``timeout_keep_alive``); beyond ``max_client_connections`` per
client address or ``max_connections`` in all, the oldest connection doing no work is closed, so
idle or half-sent connections never keep ``/health`` (or any request) out.

Several processes: :func:`run_server` with ``workers > 1`` binds the port once and starts that
many uvicorn worker processes on it; each loads the same read-only bundle folder (its own copy
in memory) and the kernel spreads connections over them.

Concurrency: ``/recommend`` is a plain (sync) endpoint, so FastAPI runs each call in its worker
threadpool and requests never block the event loop or each other; the model runs under
``torch.inference_mode`` and faiss/torch release the GIL while they compute. :func:`run_server`
sets torch's and faiss' intra-op threads to ``threads`` (default 1): for one small request at a
time, parallelism comes from concurrent requests, not from splitting one tiny matmul.

Start-up (:func:`ready_to_serve`): every serving process answers one warm-up request before it
listens, so the bank's HNSW graph and other first-use work is built then, not in a client's
request; then it freezes its heap, so a full garbage collection never rescans the ~200k objects
of torch, pydantic and the bundle in the middle of a request.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import threading
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from .app_options import (DEFAULT_BODY_TIMEOUT, DEFAULT_KEEP_ALIVE, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_INFLIGHT,
                          MAX_BODY_BYTES, add_serve_arguments)
from . import guard
from .bundle import Bundle, load_bundle, verify_bundle

MAX_N = 1000
MAX_HISTORY = 10_000
MAX_ID_LENGTH = 1024
MAX_ERRORS = 20  # validation problems listed in one 422


def _valid_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate)") from None
    return value


def _int_as_text(value: Any) -> Any:
    """Integer ids (most logs have them) are the raw id strings they print as: 6413 -> "6413".
    Booleans and floats stay invalid."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


RawId = Annotated[str, BeforeValidator(_int_as_text), StringConstraints(max_length=MAX_ID_LENGTH),
                  AfterValidator(_valid_text)]


def _safe_text(value: Any, limit: int = 200) -> str:
    """Printable, UTF-8-encodable and short: for error bodies that must always serialise."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def _safe_loc(loc: Any) -> list:
    return [p if isinstance(p, int) and not isinstance(p, bool) else _safe_text(p, 80) for p in (loc or [])]


def validation_errors(errors: list[dict]) -> dict[str, Any]:
    """The 422 body: the first ``MAX_ERRORS`` problems as type/loc/msg, without their input."""
    detail = [{"type": _safe_text(e.get("type", "invalid"), 80), "loc": _safe_loc(e.get("loc")),
               "msg": _safe_text(e.get("msg", "invalid"))} for e in errors[:MAX_ERRORS]]
    body: dict[str, Any] = {"detail": detail}
    if len(errors) > MAX_ERRORS:
        body["more_errors"] = len(errors) - MAX_ERRORS
    return body


def _json_response(status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> tuple[dict, dict]:
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                         *headers]}
    return start, {"type": "http.response.body", "body": data}


class ServingLimits:
    """ASGI middleware: bounded requests in progress (503 + Retry-After beyond), a deadline and a
    size cap on request bodies (408 / 413, connection closed). ``/health`` is not limited.

    The body is read here, in full, before the app sees the request, then replayed to it; a request
    counts as in progress once its body has arrived (clients still sending theirs are bounded by
    the body deadline and the connection guard, :mod:`dmirec.serving.guard`, not by this limit).
    """

    def __init__(self, app, *, max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 body_timeout: float = DEFAULT_BODY_TIMEOUT, max_body_bytes: int = MAX_BODY_BYTES):
        if max_inflight < 1 or body_timeout <= 0 or max_body_bytes < 1:
            raise ValueError("max_inflight, body_timeout and max_body_bytes must be positive")
        self.app = app
        self.max_inflight = int(max_inflight)
        self.body_timeout = float(body_timeout)
        self.max_body_bytes = int(max_body_bytes)
        self.inflight = 0
        self.rejected = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") == "/health":
            return await self.app(scope, receive, send)
        if scope.get("method") in ("POST", "PUT", "PATCH"):  # a body still arriving is not work in progress
            got = await self._read_body(scope, receive)
            if isinstance(got, tuple):  # an error response; the connection is closed after it
                start, body = _json_response(*got, [(b"connection", b"close")])
                await send(start)
                await send(body)
                return
            if got is None:  # the client went away
                return
            receive = _replay(got, receive)
        if self.inflight >= self.max_inflight:
            self.rejected += 1
            start, body = _json_response(503, {"detail": f"server busy: {self.inflight} requests in progress "
                                                         f"(limit {self.max_inflight}); retry shortly"},
                                         [(b"retry-after", b"1")])
            await send(start)
            await send(body)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1

    async def _read_body(self, scope, receive) -> bytes | tuple[int, dict] | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return 400, {"detail": "invalid content-length header"}
                if declared > self.max_body_bytes:
                    return 413, {"detail": f"request body of {declared} bytes is over the limit of "
                                           f"{self.max_body_bytes} bytes"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return 408, {"detail": f"request body not received within {self.body_timeout:g} s"}
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return 413, {"detail": f"request body is over the limit of {self.max_body_bytes} bytes"}
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


def _replay(body: bytes, receive):
    done = False

    async def replayed():
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for a disconnect, as the server would

    return replayed


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


def create_app(bundle: Bundle | str | Path, *, threads: int | None = None,
               max_inflight: int = DEFAULT_MAX_INFLIGHT, body_timeout: float = DEFAULT_BODY_TIMEOUT,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving ``bundle`` (a loaded :class:`Bundle` or a bundle folder).

    ``threads``: faiss OpenMP threads per request (set in every worker thread; torch's intra-op
    setting is process-wide, see :func:`configure_threads`); None leaves them as they are.
    ``max_inflight``, ``body_timeout``, ``max_body_bytes``: see :class:`ServingLimits`.
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    meta = bundle.metadata()
    meta["limits"] = {"n_min": 1, "n_max": MAX_N, "history_max": MAX_HISTORY, "id_max_length": MAX_ID_LENGTH,
                      "max_inflight": int(max_inflight), "body_timeout_s": float(body_timeout),
                      "max_body_bytes": int(max_body_bytes)}
    app = FastAPI(title="dmirec recommendation service", version=meta["versions"]["serving"]["dmirec"],
                  description="Multi-interest candidate retrieval over an exported dmirec bundle.")
    app.state.bundle = bundle
    app.add_middleware(ServingLimits, max_inflight=max_inflight, body_timeout=body_timeout,
                       max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        body = validation_errors(list(exc.errors()))
        kind = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in kind.lower():
            body["hint"] = ("the body must be JSON sent with the header 'content-type: application/json' "
                            + (f"(got {_safe_text(kind, 80)!r})" if kind else "(the request had no content-type)")
                            + ', e.g. {"history": ["id1", "id2"], "n": 50}')
        return JSONResponse(body, status_code=422)

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

    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def _listen(host: str, port: int) -> socket.socket:
    """Bind the port before anything is printed: a busy port is an error, not a half-started server."""
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


_ENV = "DMIREC_SERVE_SETTINGS"


def ready_to_serve(bundle: Bundle) -> None:
    """Last step before a serving process listens: one warm-up request (:meth:`Bundle.warm`: what is
    built on first use, such as the bank's HNSW graph, is built now), then everything alive is moved
    out of the garbage collector's reach (``gc.freeze``, as the Python docs advise for servers). A full
    collection of a loaded process (~200k objects of torch, pydantic and the bundle) takes ~100 ms on
    our machines and would stall every request in flight; frozen objects are never scanned again.
    """
    bundle.warm()
    gc.collect()
    gc.freeze()


def app_from_env() -> FastAPI:
    """App factory for worker processes: the settings come from ``$DMIREC_SERVE_SETTINGS`` (JSON)."""
    settings = json.loads(os.environ[_ENV])
    guard.configure(settings["max_connections"], settings["max_client_connections"], settings["header_timeout"])
    configure_threads(settings["threads"])
    bundle = load_bundle(settings["bundle_dir"], verify=False, device=settings.get("device", "cpu"))  # verified once by the parent
    app = create_app(bundle, threads=settings["threads"], max_inflight=settings["max_inflight"],
                     body_timeout=settings["body_timeout"])
    ready_to_serve(bundle)
    return app


def run_server(bundle_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, *, threads: int = 1,
               log_level: str = "info", access_log: bool = False, workers: int = 1,
               max_inflight: int = DEFAULT_MAX_INFLIGHT, body_timeout: float = DEFAULT_BODY_TIMEOUT,
               keep_alive: int = DEFAULT_KEEP_ALIVE, max_connections: int = DEFAULT_MAX_CONNECTIONS,
               device: str = "cpu", header_timeout: float = guard.DEFAULT_HEADER_TIMEOUT,
               max_client_connections: int = guard.DEFAULT_MAX_PER_CLIENT) -> None:
    """Load the bundle (checksums verified) and serve it with uvicorn until interrupted.

    ``workers > 1`` starts that many processes on one listening socket, each with its own copy of
    the (read-only) bundle and its own ``max_inflight``.
    """
    import uvicorn

    threads, workers = max(1, int(threads)), int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0 <= int(port) <= 65535:  # before the bundle is loaded
        raise ValueError(f"port must be 0..65535, got {port}")
    bounds = {"max_connections": int(max_connections), "max_client_connections": int(max_client_connections),
              "header_timeout": float(header_timeout)}
    guard.Guard(bounds["max_connections"], bounds["max_client_connections"], bounds["header_timeout"])  # checks
    # connection bounds by the guard's protocol, not uvicorn's limit_concurrency (which answers 503 to
    # every request, /health included, while that many connections are merely open)
    common = dict(log_level=log_level, access_log=access_log, timeout_keep_alive=int(keep_alive),
                  http=guard.protocol_path())
    if workers == 1:
        guard.configure(bounds["max_connections"], bounds["max_client_connections"], bounds["header_timeout"])
        configure_threads(threads)
        bundle = load_bundle(bundle_dir, device=device)
        app = create_app(bundle, threads=threads, max_inflight=max_inflight, body_timeout=body_timeout)
        ready_to_serve(bundle)
        sock = _listen(host, port)
        print(f"serving {bundle.manifest.get('model')} over {bundle.num_items} items "
              f"(index: {bundle.index_kind}) on http://{host}:{port}", flush=True)
        uvicorn.Server(uvicorn.Config(app, **common)).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    manifest = verify_bundle(bundle_dir)
    os.environ[_ENV] = json.dumps({"bundle_dir": str(Path(bundle_dir).resolve()), "threads": threads,
                                   "max_inflight": int(max_inflight), "body_timeout": float(body_timeout),
                                   "device": device, **bounds})
    sock = _listen(host, port)
    config = uvicorn.Config("dmirec.serving.app:app_from_env", factory=True, workers=workers, **common)
    print(f"serving {manifest.get('model')} over {manifest.get('num_items')} items "
          f"(index: {(manifest.get('index') or {}).get('kind', 'exact')}) on http://{host}:{port} "
          f"with {workers} worker processes", flush=True)
    Multiprocess(config, sockets=[sock]).run()


SERVE_OPTIONS = ("host", "threads", "log_level", "access_log", "workers", "max_inflight", "body_timeout",
                 "keep_alive", "max_connections", "device", "header_timeout", "max_client_connections")


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m dmirec.serving.app", description="Serve a dmirec bundle over HTTP.")
    add_serve_arguments(p)
    try:
        args = p.parse_args(argv)
        run_server(args.bundle_dir, port=args.port, **{k: getattr(args, k) for k in SERVE_OPTIONS})
        return 0
    except (ValueError, OSError) as exc:
        print(f"dmirec serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(_main())
