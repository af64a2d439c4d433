"""Issue 26, item 1: idle, half-sent and stalled connections never starve the service, and a client
that goes away mid-body is not an exception in the server's log."""

from __future__ import annotations

import socket
import struct
import time

import httpx
import pytest

from dmirec.serving.export import export_bundle
from dmirec.serving import load_bundle

from test_app_limits import free_port, start, wait_up

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, tiny_serving_run):
    path = tmp_path_factory.mktemp("hc") / "bundle"
    export_bundle(tiny_serving_run[1], path, query_sample=20)
    return path


def _open(port: int, n: int, payload: bytes = b"") -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if payload:
            s.sendall(payload)
        out.append(s)
    return out


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        while s.recv(4096):
            pass
        return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:  # reset
        return True


def _answered_fast(c: httpx.Client, body: dict) -> None:
    t0 = time.monotonic()
    health = c.get("/health")
    t1 = time.monotonic()
    rec = c.post("/recommend", json=body)
    t2 = time.monotonic()
    assert health.status_code == 200, health.text
    assert rec.status_code == 200, rec.text
    assert t1 - t0 < 1 and t2 - t1 < 1, (t1 - t0, t2 - t1)
    assert len(rec.json()["items"]) == body["n"]


def _reset(s: socket.socket) -> None:
    """Close with an RST (the client vanishes) rather than an orderly FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_idle_half_sent_and_stalled_connections_never_starve(bundle_dir):
    ids = load_bundle(bundle_dir, verify=False).item_ids
    body = {"history": ids[:3], "n": 5}
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400 and (hard == resource.RLIM_INFINITY or hard >= 1400):
        resource.setrlimit(resource.RLIMIT_NOFILE, (1400, hard))
    elif soft < 1400:
        pytest.skip(f"1,100 sockets need more open files than the limit ({hard})")
    port = free_port()
    # the default connection bounds (1024 in all, 256 per client); a short header deadline and a
    # small in-flight limit, to test them within seconds
    proc = start(bundle_dir, port, "--header-timeout", "3", "--max-inflight", "8", "--body-timeout", "8")
    held: list[socket.socket] = []
    try:
        wait_up(port, proc)
        # 1,000 idle sockets and 100 that sent part of their headers: more than both bounds
        held += _open(port, 1000)
        held += _open(port, 100, b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
            _answered_fast(c, body)
        # 20 stalled bodies (more than --max-inflight 8): /recommend is still answered at once
        stalled = _open(port, 20, b"POST /recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                                  b"content-length: 100\r\n\r\n{\"history\": [")
        held += stalled
        time.sleep(0.3)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
            _answered_fast(c, body)
        # a connection that never sends its headers is closed at the header deadline (3 s), and one
        # that sends a byte now and then is not kept open by it
        lone = _open(port, 1)[0]
        trickle = _open(port, 1, b"GET /health HTTP/1.1\r\n")[0]
        t0 = time.monotonic()
        for _ in range(3):
            time.sleep(1)
            try:
                trickle.sendall(b"x")
            except OSError:
                break
        assert _closed_by_server(lone, 4) and _closed_by_server(trickle, 4)
        assert time.monotonic() - t0 < 8
        # clients that vanish mid-body (past the read buffer: reading paused, then resumed on a dead socket)
        big = b"POST /recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2000000\r\n\r\n"
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(big + b"[" * 300_000)
            _reset(s)
        time.sleep(0.5)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
            _answered_fast(c, body)
    finally:
        for s in held:
            s.close()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "Exception in ASGI application" not in err and "Traceback" not in err, err[-3000:]


def test_serve_refuses_out_of_range_options(bundle_dir, capsys):
    from dmirec.cli.main import main
    from dmirec.serving.app import run_server

    for args in (["--port", "70000"], ["--port", "-1"], ["--max-inflight", "0"], ["--body-timeout", "nan"],
                 ["--header-timeout", "0"], ["--max-client-connections", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", str(bundle_dir), *args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"argument {args[0]}" in err and "Traceback" not in err, (args, err)
    with pytest.raises(ValueError, match="port must be 0..65535, got 70000"):
        run_server(bundle_dir, port=70000)
