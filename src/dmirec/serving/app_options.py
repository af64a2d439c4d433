"""The serving limits' defaults and the ``serve`` command-line options (no FastAPI import, so
``dmirec --help`` stays fast); used by ``dmirec serve`` and ``python -m dmirec.serving.app``."""

from __future__ import annotations

import argparse

MAX_BODY_BYTES = 12 * 2**20  # 10,000 ids of 1,024 characters, JSON-quoted, fit
DEFAULT_MAX_INFLIGHT = 64  # requests in progress per worker process (running or queued)
DEFAULT_BODY_TIMEOUT = 10.0  # seconds for a request body to arrive
DEFAULT_KEEP_ALIVE = 5  # seconds an idle keep-alive connection stays open
DEFAULT_MAX_CONNECTIONS = 1024  # open connections per worker process


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle_dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=1, help="torch/faiss threads per request")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="model and exact search device")
    p.add_argument("--workers", type=int, default=1, help="server processes sharing the port and the bundle")
    p.add_argument("--max-inflight", type=int, default=DEFAULT_MAX_INFLIGHT,
                   help="requests in progress per worker; one more gets 503 with Retry-After")
    p.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT,
                   help="seconds a request body may take to arrive (else 408)")
    p.add_argument("--keep-alive", type=int, default=DEFAULT_KEEP_ALIVE, help="idle keep-alive timeout (s)")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                   help="open connections per worker; more get 503")
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true")
