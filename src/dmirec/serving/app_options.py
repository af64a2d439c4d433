"""The serving limits' defaults and the ``serve`` command-line options (no FastAPI import, so
``dmirec --help`` stays fast); used by ``dmirec serve`` and ``python -m dmirec.serving.app``."""

from __future__ import annotations

import argparse

MAX_BODY_BYTES = 12 * 2**20  # 10,000 ids of 1,024 characters, JSON-quoted, fit
DEFAULT_MAX_INFLIGHT = 64  # requests in progress per worker process (running or queued)
DEFAULT_BODY_TIMEOUT = 10.0  # seconds for a request body to arrive
DEFAULT_KEEP_ALIVE = 5  # seconds an idle keep-alive connection stays open
DEFAULT_MAX_CONNECTIONS = 1024  # open connections per worker process
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds for a connection's request headers to arrive
DEFAULT_MAX_CLIENT_CONNECTIONS = 256  # open connections per client address, per worker process


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0..65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value


def at_least(low: float, kind=int):
    """An argparse type: a number (``kind``) of at least ``low``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not value >= low:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value
    return parse


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle_dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--threads", type=at_least(1), default=1, help="torch/faiss threads per request")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="model and exact search device")
    p.add_argument("--workers", type=at_least(1), default=1, help="server processes sharing the port and the bundle")
    p.add_argument("--max-inflight", type=at_least(1), default=DEFAULT_MAX_INFLIGHT,
                   help="requests in progress per worker; one more gets 503 with Retry-After")
    p.add_argument("--body-timeout", type=at_least(0.001, float), default=DEFAULT_BODY_TIMEOUT,
                   help="seconds a request body may take to arrive (else 408)")
    p.add_argument("--keep-alive", type=at_least(1), default=DEFAULT_KEEP_ALIVE, help="idle keep-alive timeout (s)")
    p.add_argument("--max-connections", type=at_least(1), default=DEFAULT_MAX_CONNECTIONS,
                   help="open connections per worker; beyond, the oldest idle one is closed")
    p.add_argument("--max-client-connections", type=at_least(1), default=DEFAULT_MAX_CLIENT_CONNECTIONS,
                   help="open connections per client address and worker; beyond, the client's oldest idle one "
                        "is closed")
    p.add_argument("--header-timeout", type=at_least(0.001, float), default=DEFAULT_HEADER_TIMEOUT,
                   help="seconds a connection may take to send its request headers (else it is closed)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true")
