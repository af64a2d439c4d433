"""Issue 13, serving side: error bodies that always serialise, limits, busy ports, workers, bundle
integrity, integer ids, long histories, batch input errors, and an HTTP fuzz with hostile JSON."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmirec.runs.rundir import load_trained_model
from dmirec.serving import BundleError, load_bundle
from dmirec.serving.app import MAX_ERRORS, create_app
from dmirec.serving.batch import BatchInputError, recommend_batch
from dmirec.serving.export import export_bundle

SRC = str(Path(__file__).resolve().parents[2] / "src")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, tiny_serving_run):
    path = tmp_path_factory.mktemp("hb") / "bundle"
    export_bundle(tiny_serving_run[1], path, query_sample=20)
    return path


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def client(bundle):
    with warnings.catch_warnings():  # starlette's TestClient warns about its httpx transport
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    with TestClient(create_app(bundle), raise_server_exceptions=False) as c:
        yield c


def post_raw(client, text: str | bytes):
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return client.post("/recommend", content=data, headers={"content-type": "application/json"})


@pytest.mark.parametrize("body", [
    '{"history": ["a"], "n": NaN}', '{"history": ["a"], "n": Infinity}', '{"history": ["a"], "n": -Infinity}',
    '{"history": ["a"], "n": 1e309}', '{"history": [NaN]}', '{"history": ["a"], "exclude_history": NaN}',
    '{"history": ["\\ud800"]}', '{"history": ["a"], "\\udfff": 1}', '{"history": ["ok", "\\udc80x"], "n": 5}',
    '{"history": [1e309, NaN, Infinity]}', '{"\\ud800": NaN}',
])
def test_non_finite_numbers_and_lone_surrogates_get_422(client, body):
    r = post_raw(client, body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail and all(set(d) == {"type", "loc", "msg"} for d in detail)
    # and the connection is still usable
    assert client.get("/health").status_code == 200


def test_error_bodies_do_not_echo_huge_inputs(client, bundle):
    history = [7.5] * 10_000  # 10,000 wrong-typed ids
    r = client.post("/recommend", json={"history": history})
    assert r.status_code == 422
    body = r.json()
    assert len(body["detail"]) == MAX_ERRORS and body["more_errors"] == 10_000 - MAX_ERRORS
    assert len(r.content) < 5_000 and "input" not in r.text
    r = client.post("/recommend", json={"history": ["x" * 1025] * 3})
    assert r.status_code == 422 and "xxxx" not in r.text


def test_integer_ids_accepted_alike_by_http_and_python(client, bundle):
    raw = bundle.item_ids[:3]
    as_ints = [int(r) if r.isdigit() else r for r in raw]  # ids that print as integers are sent as integers
    want = client.post("/recommend", json={"history": raw, "n": 10}).json()
    got = client.post("/recommend", json={"history": as_ints + [987654321], "n": 10})
    assert got.status_code == 200
    assert got.json()["items"] == want["items"] and got.json()["unknown"] == ["987654321"]
    assert bundle.recommend([987654321])["unknown"] == ["987654321"]
    for bad in ([True], [1.5], [None]):  # booleans, floats and nulls are not ids
        assert client.post("/recommend", json={"history": bad}).status_code == 422
    with pytest.raises(TypeError, match=r"history\[0\]: raw ids are strings or integers, got float 1.5"):
        bundle.recommend([1.5])
    with pytest.raises(TypeError, match="not one string"):
        bundle.recommend("abc")


def test_a_body_without_json_content_type_gets_a_422_that_says_so(client):
    r = client.post("/recommend", content=b'{"history": ["a"]}', headers={"content-type": "text/plain"})
    assert r.status_code == 422 and "content-type: application/json" in r.json()["hint"]


def test_long_history_keeps_the_last_seq_len(tiny_serving_run):
    model, cfg = load_trained_model(tiny_serving_run[1])
    L = cfg.seq_len
    hist = torch.randint(1, 100, (3, 3 * L))
    mask = torch.ones_like(hist, dtype=torch.bool)
    with torch.no_grad():
        long = model.user_vectors(hist, mask)
        tail = model.user_vectors(hist[:, -L:], mask[:, -L:])
    assert torch.equal(long, tail)


def test_bundle_manifest_fields_and_extra_files(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    load_bundle(copy)
    (copy / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match=r"notes\.txt: not listed in the manifest"):
        load_bundle(copy)
    (copy / "notes.txt").unlink()
    m = json.loads((copy / "manifest.json").read_text())
    m["source"]["test"] = {"recall@50": 0.99}
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest's own fields failed"):
        load_bundle(copy)


# ------------------------------------------------------------------------------ limits


def test_inflight_limit_answers_503_with_retry_after(bundle):
    from dmirec.serving.app import ServingLimits

    gate = asyncio.Event()

    async def slow_app(scope, receive, send):
        await receive()
        await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limited = ServingLimits(slow_app, max_inflight=2, body_timeout=5)

    async def main():
        transport = httpx.ASGITransport(app=limited)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            first = [asyncio.create_task(c.post("/recommend", content=b"{}")) for _ in range(2)]
            await asyncio.sleep(0.05)
            third = await c.post("/recommend", content=b"{}")
            gate.set()
            done = await asyncio.gather(*first)
            after = await c.post("/recommend", content=b"{}")
            return third, done, after

    third, done, after = asyncio.run(main())
    assert third.status_code == 503 and third.headers["retry-after"] == "1"
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200
    assert limited.inflight == 0 and limited.rejected == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bundle_dir, port, *extra):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-m", "dmirec", "serve", str(bundle_dir), "--port", str(port),
                             "--log-level", "warning", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)


def wait_up(port: int, proc) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("server did not start")


def test_busy_port_is_an_error_before_serving(bundle_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = start(bundle_dir, port)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "serving" not in out
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_stalled_body_gets_408_and_two_workers_serve(bundle_dir, bundle):
    port = free_port()
    proc = start(bundle_dir, port, "--workers", "2", "--body-timeout", "1", "--keep-alive", "1")
    try:
        wait_up(port, proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # idle keep-alive is closed
            s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            t0 = time.monotonic()
            while s.recv(4096):
                pass
            assert time.monotonic() - t0 < 5
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      b"content-length: 100\r\n\r\n{\"history\": [")
            t0 = time.monotonic()
            reply = b""
            while chunk := s.recv(4096):  # until the server closes the connection
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408") and b"within 1 s" in reply
            assert time.monotonic() - t0 < 5
        body = {"history": bundle.item_ids[:4], "n": 7}
        want = bundle.recommend(body["history"], 7)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            # a hostile body, then a good one on the same keep-alive connection: 422, then 200
            bad = c.post("/recommend", content=b'{"history": ["\\ud800", NaN], "n": 1e309}',
                         headers={"content-type": "application/json"})
            assert bad.status_code == 422 and c.post("/recommend", json=body).status_code == 200
            for _ in range(6):
                got = c.post("/recommend", json=body).json()
                assert [x["item"] for x in got["items"]] == [x["item"] for x in want["items"]]
            big = c.post("/recommend", content=b"x" * (13 * 2**20), headers={"content-type": "application/json"})
            assert big.status_code == 413
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "with 2 worker processes" in out


# ------------------------------------------------------------------------------ batch input errors


def test_batch_names_the_file_for_gzip_and_pipe_input(bundle_dir, tmp_path):
    import gzip

    text = "user_id,item_id,timestamp\n" + "".join(f"u{u},{b},{k}\n" for u in range(30) for k, b in
                                                    enumerate(load_bundle(bundle_dir, verify=False).item_ids[:5]))
    gz = gzip.compress(text.encode())
    bad = tmp_path / "log.csv.gz"
    bad.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(BatchInputError, match=r"log\.csv\.gz: corrupt or truncated gzip"):
        recommend_batch(bundle_dir, bad, tmp_path / "out.parquet", n=5, progress=False)
    # a pipe: every user is read
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    src = tmp_path / "log.csv"
    src.write_text(text)
    writer = subprocess.Popen(["sh", "-c", f"cat {src} > {fifo}"])
    try:
        stats = recommend_batch(bundle_dir, fifo, tmp_path / "out.parquet", n=5, format="csv", progress=False)
    finally:
        writer.wait(timeout=30)
    assert stats["users"] == 30 and stats["rows"] == 150


def test_batch_user_col_on_the_command_line(bundle_dir, tmp_path):
    from dmirec.cli.main import main

    ids = load_bundle(bundle_dir, verify=False).item_ids[:5]
    log = tmp_path / "log.csv"
    log.write_text("customer,product,ts\n" + "".join(f"c{u},{b},{k}\n" for u in range(4) for k, b in enumerate(ids)))
    assert main(["recommend", str(bundle_dir), "--input", str(log), "--output", str(tmp_path / "o.parquet"),
                 "-n", "3", "--user-col", "customer", "--item-col", "product", "--time-col", "ts",
                 "--no-progress"]) == 0
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "o.parquet")) == 12


def test_missing_column_hint_names_the_flags(tmp_path):
    from dmirec.data.readers import InputError, read_csv

    p = tmp_path / "log.csv"
    p.write_text("customer,product,timestamp\nu,i,1\n")
    with pytest.raises(InputError, match="--user-col/--item-col/--time-col"):
        read_csv(p)
    p.write_text("user,item,timestamp\nu,i,1\n")  # the README's names read as the defaults
    assert read_csv(p)["user"].tolist() == ["u"]


# ------------------------------------------------------------------------------ fuzz


_json_atoms = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e309", "-1e400", "1.5", "0"]).map(lambda t: ("raw", t)),
    st.text(alphabet=st.characters(codec=None, blacklist_categories=()), max_size=12),
    st.sampled_from(["\ud800", "\udfff", "a\udc80b", "\x00", "\u2028"]),
)


def _render(value) -> str:
    """JSON text that may hold NaN/Infinity/1e309 and lone surrogates (as \\u escapes)."""
    if isinstance(value, tuple):
        return value[1]
    if isinstance(value, list):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_render(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


_values = st.recursive(_json_atoms, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                       max_leaves=8)
_bodies = st.one_of(
    st.fixed_dictionaries({"history": _values}, optional={"n": _values, "exclude_history": _values}),
    st.dictionaries(st.sampled_from(["history", "n", "exclude_history", "\ud800", "x"]), _values, max_size=4),
    _values,
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=_bodies)
def test_http_fuzz_hostile_json_never_5xx(client, body):
    r = post_raw(client, _render(body))
    assert r.status_code < 500, (r.status_code, r.text[:300])
    r.json()  # every answer is JSON that parses


def test_a_serving_process_freezes_its_loaded_heap(bundle_dir):
    """Worker processes freeze torch/pydantic/bundle objects once loaded, so a full collection
    never rescans them mid-request (a ~100 ms pause at ~200k objects)."""
    settings = {"bundle_dir": str(bundle_dir), "threads": 1, "max_inflight": 4, "body_timeout": 5.0,
                "max_connections": 8, "max_client_connections": 8, "header_timeout": 5.0}
    code = ("import gc, json, os\n"
            "from dmirec.serving.app import app_from_env\n"
            "before = gc.get_freeze_count()\n"
            "app_from_env()\n"
            "print(json.dumps([before, gc.get_freeze_count()]))\n")
    env = {**os.environ, "PYTHONPATH": SRC, "DMIREC_SERVE_SETTINGS": json.dumps(settings)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == 0 and after > 10_000
