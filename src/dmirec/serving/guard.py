"""Connection guard: uvicorn's HTTP protocols with a header deadline and connection bounds.

uvicorn holds a connection that sends nothing, or only part of its request headers, for as long as
the client keeps it open, and its ``limit_concurrency`` answers 503 to *every* request (``/health``
included) once that many connections are open. So idle sockets alone could starve the service.
The protocols here (subclasses of uvicorn's h11 and httptools protocols, one :class:`Guard` per
server process) replace that with three rules:

* **Header deadline.** A connection must start a request (its headers complete) within
  ``header_timeout`` seconds of opening, and again within ``header_timeout`` of its last response;
  otherwise it is closed. Sending a byte now and then does not extend the deadline.
* **Bounded connections, idle ones evicted.** At most ``max_per_client`` connections per client
  address and ``max_connections`` in all. A new connection over a bound is accepted and the
  oldest connection of that client (or of the server) that is doing no work is closed: one that
  is idle or still sending its headers, else one still sending its body. A connection whose
  request the app is computing is never closed; when every connection is such, the new one is.
  So idle or half-sent connections, however many, never keep ``/health`` or ``/recommend`` out.
* **A closed transport is not an error.** Writes and flow control (pausing or resuming reads) on a
  transport that is already closing (the client went away, uvicorn has not yet been told) are
  skipped; uvloop would raise them as an exception inside the application.

The request-level limits (in-flight requests, body deadline and size) are
:class:`dmirec.serving.app.ServingLimits`.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app_options import DEFAULT_HEADER_TIMEOUT
from .app_options import DEFAULT_MAX_CLIENT_CONNECTIONS as DEFAULT_MAX_PER_CLIENT


class _SafeTransport:
    """The connection's transport, minus writes once it is closing: a response sent after the client
    reset the connection (before uvicorn has seen the loss) is dropped, not an exception."""

    def __init__(self, transport):
        self._transport = transport

    def write(self, data) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, lines) -> None:
        if not self._transport.is_closing():
            self._transport.writelines(lines)

    def __getattr__(self, name):
        return getattr(self._transport, name)


class _SafeFlowControl(FlowControl):
    """uvicorn's flow control, minus the calls on a transport that is already closing."""

    def pause_reading(self) -> None:
        if not self._transport.is_closing():
            super().pause_reading()

    def resume_reading(self) -> None:
        if not self._transport.is_closing():
            super().resume_reading()


class Guard:
    """The bounds of one server process: open connections, per client and in all (oldest first)."""

    def __init__(self, max_connections: int, max_per_client: int, header_timeout: float):
        if max_connections < 1 or max_per_client < 1 or not header_timeout > 0:
            raise ValueError("max_connections, max_per_client and header_timeout must be positive")
        self.max_connections = int(max_connections)
        self.max_per_client = int(max_per_client)
        self.header_timeout = float(header_timeout)
        self.all: OrderedDict[Any, None] = OrderedDict()
        self.by_client: dict[str, OrderedDict[Any, None]] = {}
        self.evicted = 0

    def add(self, proto) -> None:
        """Register a new connection; close whatever the bounds require."""
        client = proto.guard_client
        mine = self.by_client.setdefault(client, OrderedDict())
        mine[proto] = None
        self.all[proto] = None
        if len(mine) > self.max_per_client:
            self._evict(mine, proto)
        if len(self.all) > self.max_connections and not proto.transport.is_closing():
            self._evict(self.all, proto)

    def remove(self, proto) -> None:
        self.all.pop(proto, None)
        mine = self.by_client.get(proto.guard_client)
        if mine is not None:
            mine.pop(proto, None)
            if not mine:
                del self.by_client[proto.guard_client]

    def _evict(self, pool: OrderedDict, new) -> None:
        """Close the oldest connection of ``pool`` doing no work (idle first, then waiting for its
        body), other than ``new``; ``new`` itself when there is none."""
        for rank in (0, 1):
            for proto in pool:
                if proto is not new and not proto.transport.is_closing() and _state(proto) == rank:
                    self._close(proto)
                    return
        self._close(new)

    def _close(self, proto) -> None:
        self.evicted += 1
        self.remove(proto)
        proto.transport.close()


def _state(proto) -> int:
    """0: idle or still sending headers; 1: sending its request body; 2: the app is working on it."""
    cycle = proto.cycle
    if cycle is None or cycle.response_complete:
        return 0
    if cycle.more_body and not cycle.response_started:
        return 1
    return 2


_guard: Guard | None = None  # this process's bounds (:func:`configure`)


def configure(max_connections: int, max_per_client: int = DEFAULT_MAX_PER_CLIENT,
              header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> Guard:
    """Set this process's bounds; the protocols below read them for every new connection."""
    global _guard
    _guard = Guard(max_connections, max_per_client, header_timeout)
    return _guard


class _GuardMixin:
    """The guard's hooks, for uvicorn's h11 and httptools protocols alike."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        transport = _SafeTransport(transport)
        super().connection_made(transport)
        self.flow = _SafeFlowControl(transport)
        self.guard = _guard or configure(2**31)
        self.guard_client = self.client[0] if self.client else "?"
        self.guard_timer: asyncio.TimerHandle | None = None
        self.guard.add(self)
        self._arm_header_deadline()

    def connection_lost(self, exc) -> None:
        self.guard.remove(self)
        if self.guard_timer is not None:
            self.guard_timer.cancel()
            self.guard_timer = None
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        if self.guard_timer is not None:
            self.guard_timer.cancel()
        waiting_after = self.cycle  # the request before the one we wait for (None: none yet)
        self.guard_timer = self.loop.call_later(self.guard.header_timeout, self._header_deadline, waiting_after)

    def _header_deadline(self, waiting_after) -> None:
        self.guard_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is waiting_after or _state(self) == 0:  # no request started since, or idle again
            self.guard.remove(self)
            self.transport.close()


class GuardedH11Protocol(_GuardMixin, H11Protocol):
    """uvicorn's h11 protocol under the guard."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(_GuardMixin, HttpToolsProtocol):
        """uvicorn's httptools protocol under the guard."""
except ImportError:  # httptools is optional
    GuardedHttpToolsProtocol = None


def protocol_path() -> str:
    """The ``http=`` import path for ``uvicorn.Config``: httptools when installed, else h11."""
    name = "GuardedHttpToolsProtocol" if GuardedHttpToolsProtocol is not None else "GuardedH11Protocol"
    return f"{__name__}:{name}"
