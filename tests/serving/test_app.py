"""The HTTP service against a real uvicorn server, its OpenAPI schema, and batch candidates.

A 50-step ComiRec-SA run on planted data is exported to a bundle; the live server's answers are
compared with offline scoring (the model plus exact retrieval, computed here directly).
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dmirec.data.dataset import load_dataset
from dmirec.retrieval import search
from dmirec.runs.rundir import load_trained_model
from dmirec.serving import load_bundle
from dmirec.serving.app import MAX_N, create_app
from dmirec.serving.batch import BatchInputError, recommend_batch
from dmirec.serving.export import export_bundle



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_serving_run):
    data_dir, run_dir = tiny_serving_run
    bundle_dir = tmp_path_factory.mktemp("serve") / "bundle"
    export_bundle(run_dir, bundle_dir, query_sample=30)
    model, cfg = load_trained_model(run_dir)
    return {"data": load_dataset(data_dir), "model": model, "cfg": cfg, "bundle_dir": bundle_dir,
            "bundle": load_bundle(bundle_dir)}


@pytest.fixture(scope="module")
def app(env):
    return create_app(env["bundle"])


@pytest.fixture(scope="module")
def server(app):
    """A real uvicorn server on a free loopback port, in a background thread; yields its base URL."""
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


def offline(env, raw_history: list[str], n: int, exclude_history: bool = False) -> list[tuple[str, float, int]]:
    """The reference: known ids -> last seq_len left-padded -> model.user_vectors -> exact torch search."""
    data, model, L = env["data"], env["model"], env["cfg"].seq_len
    index = {raw: i + 1 for i, raw in enumerate(data.item_ids)}
    ids = [index[r] for r in raw_history if r in index]
    tail = ids[-L:]
    hist = torch.zeros(1, L, dtype=torch.long)
    if tail:
        hist[0, L - len(tail):] = torch.tensor(tail)
    with torch.no_grad():
        queries = model.user_vectors(hist, hist > 0)  # (1, K, D)
    res = search(queries, model.item_embeddings().detach(), n, backend="torch",
                 exclude=[ids] if exclude_history else None)
    return [(data.item_ids[i - 1], float(s), int(k))
            for i, s, k in zip(res.ids[0], res.scores[0], res.interest[0]) if i > 0]


def as_tuples(body: dict) -> list[tuple[str, float, int]]:
    return [(x["item"], x["score"], x["interest"]) for x in body["items"]]


def assert_same(got: list, want: list) -> None:
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[2] for g in got] == [w[2] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-5, atol=1e-6)


def user_histories(env, split: str = "valid", users: int = 12) -> list[list[str]]:
    seqs = env["data"].splits[split]
    return [[env["data"].item_ids[i - 1] for i in seqs.sequence(u)] for u in range(users)]


# ----------------------------------------------------------------------------------------------
# online


@pytest.mark.parametrize("exclude", [False, True])
def test_recommend_equals_offline_scoring(env, client, exclude):
    for history in user_histories(env):  # 10..30 items: longer than seq_len=10 for most
        r = client.post("/recommend", json={"history": history, "n": 25, "exclude_history": exclude})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["unknown"] == [] and body["fallback"] is False
        assert_same(as_tuples(body), offline(env, history, 25, exclude))
        if exclude:
            assert not set(history) & {x["item"] for x in body["items"]}


def test_unknown_ids_are_dropped_and_listed(env, client):
    history = user_histories(env, users=1)[0]
    noisy = ["ghost-1"] + history[:5] + ["ghost-2", "ghost-1"] + history[5:] + ["", "ghost-3"]
    body = client.post("/recommend", json={"history": noisy, "n": 20}).json()
    assert body["unknown"] == ["ghost-1", "ghost-2", "", "ghost-3"]
    assert body["fallback"] is False
    assert_same(as_tuples(body), offline(env, history, 20))


@pytest.mark.parametrize("history", [[], ["nope"], ["nope", "also-nope", "nope"]])
def test_empty_or_unknown_history_falls_back_to_most_popular(env, client, history):
    body = client.post("/recommend", json={"history": history, "n": 15}).json()
    assert body["fallback"] is True
    assert body["unknown"] == list(dict.fromkeys(history))
    pop = env["data"].item_popularity("train")
    order = sorted(range(1, len(pop)), key=lambda i: (-pop[i], i))[:15]
    assert [x["item"] for x in body["items"]] == [env["data"].item_ids[i - 1] for i in order]
    assert [x["score"] for x in body["items"]] == [float(pop[i]) for i in order]
    assert all(x["interest"] == -1 for x in body["items"])


def test_n_bounds(env, client):
    history = user_histories(env, users=1)[0]
    assert len(client.post("/recommend", json={"history": history, "n": 1}).json()["items"]) == 1
    assert len(client.post("/recommend", json={"history": history}).json()["items"]) == 50  # default
    body = client.post("/recommend", json={"history": history, "n": MAX_N}).json()
    assert len(body["items"]) == 200  # the whole catalogue: fewer than n exist
    body = client.post("/recommend", json={"history": history, "n": MAX_N, "exclude_history": True}).json()
    assert len(body["items"]) == 200 - len(set(history))
    for bad in (0, -3, MAX_N + 1):
        r = client.post("/recommend", json={"history": history, "n": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "n"]


@pytest.mark.parametrize("body, where", [
    ({"n": 5}, ["body", "history"]),
    ({"history": "i1"}, ["body", "history"]),
    ({"history": [1.5, 2]}, ["body", "history", 0]),  # integer ids are accepted (test_app_limits)
    ({"history": [None]}, ["body", "history", 0]),
    ({"history": ["i1"], "n": "5"}, ["body", "n"]),
    ({"history": ["i1"], "n": 2.5}, ["body", "n"]),
    ({"history": ["i1"], "n": True}, ["body", "n"]),
    ({"history": ["i1"], "exclude_history": "yes"}, ["body", "exclude_history"]),
    ({"history": ["i1"], "exclude": True}, ["body", "exclude"]),
    ({"history": ["x" * 1025]}, ["body", "history", 0]),
    ({"history": ["i1"] * 10_001}, ["body", "history"]),
    ([], ["body"]),
])
def test_invalid_bodies_get_422_with_the_reason(client, body, where):
    r = client.post("/recommend", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail[0]["loc"] == where and detail[0]["msg"]


@pytest.mark.parametrize("content", [b'{"history": [', b'"\xff', b"\xff\xfe{}"])
def test_malformed_json_gets_422(client, content):
    r = client.post("/recommend", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.text and r.json()["detail"][0]["loc"][0] == "body"


def test_health_and_metadata(env, client):
    h = client.get("/health").json()
    assert h == {"status": "ok", "catalogue_size": 200, "index": "exact"}
    m = client.get("/metadata").json()
    assert m["model"] == "comirec-sa" and m["dataset"]["name"] == "synthetic"
    assert m["catalogue_size"] == 200 and m["seq_len"] == 10 and m["num_interests"] == 4
    assert m["index"]["kind"] == "exact"
    assert m["versions"]["format_version"] == 1
    assert m["versions"]["serving"]["torch"] == torch.__version__
    assert m["limits"]["n_max"] == MAX_N


def test_concurrent_requests_equal_sequential(env, client, server):
    histories = user_histories(env, "test", users=20)
    bodies = [{"history": h, "n": 30, "exclude_history": bool(i % 2)} for i, h in enumerate(histories)]
    sequential = [client.post("/recommend", json=b).json() for b in bodies]
    barrier = threading.Barrier(len(bodies))

    def call(b):
        with httpx.Client(base_url=server, timeout=30) as c:
            barrier.wait()
            r = c.post("/recommend", json=b)
            assert r.status_code == 200
            return r.json()

    with ThreadPoolExecutor(len(bodies)) as pool:
        concurrent = list(pool.map(call, bodies))
    for a, b in zip(concurrent, sequential):
        assert_same(as_tuples(a), as_tuples(b))


# ----------------------------------------------------------------------------------------------
# property-based: the OpenAPI schema, in-process ASGI


def test_openapi_schema_no_server_errors(app):
    """Schemathesis cases from the app's OpenAPI schema (50 valid per operation, 50 invalid for POST): no 5xx, every
    response conforms to the documented status codes, content types and schemas."""
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == {"POST /recommend", "GET /health", "GET /metadata"}
    calls = {"total": 0, "422": 0}
    modes = list(schemathesis.GenerationMode)  # valid and invalid data (GETs take no input to break)
    for op, mode in itertools.product(operations, modes):
        if op.method.upper() == "GET" and mode is not schemathesis.GenerationMode.POSITIVE:
            continue
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call_and_validate(checks=[not_a_server_error, status_code_conformance,
                                                      content_type_conformance, response_schema_conformance])
            calls["total"] += 1
            calls["422"] += response.status_code == 422

        check()
    assert calls["total"] >= 100 and calls["422"] > 0  # the invalid-data phase did reach validation


# ----------------------------------------------------------------------------------------------
# batch


def write_log(env, path: Path) -> pd.DataFrame:
    """A log of 14 test users grouped by user, rows shuffled within each user with tied timestamps,
    an unknown item here and there and one user whose items are all unknown."""
    rng = np.random.default_rng(7)
    rows = []
    for u, history in enumerate(user_histories(env, "test", users=13)):
        ts = np.arange(len(history)) // 2  # pairs share a timestamp: file order decides
        for j in rng.permutation(len(history)):
            rows.append((f"user{u}", history[j], int(ts[j])))
        if u % 4 == 0:
            rows.append((f"user{u}", f"unknown-{u}", 0))
    rows += [("lost", "ghost-a", 1), ("lost", "ghost-b", 2)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    df.to_csv(path, index=False)
    return df


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("exclude", [False, True])
def test_batch_equals_online(env, client, tmp_path, fmt, exclude):
    df = write_log(env, tmp_path / "log.csv")
    src = tmp_path / "log.csv"
    if fmt == "parquet":
        src = tmp_path / "log.parquet"
        df.to_parquet(src, index=False)
    out = tmp_path / "cand.parquet"
    # tiny read batches and chunks: users straddle input batches and outputs span row groups
    stats = recommend_batch(env["bundle_dir"], src, out, n=12, format=fmt, chunk_users=4,
                            exclude_history=exclude, progress=False, batch_rows=7)
    assert stats["users"] == 14 and stats["rows"] == len(df) and stats["fallback_users"] == 1
    assert stats["unknown_rows"] == 2 + 4  # user0, user4, user8, user12 + the lost user's two
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(out)
    assert pf.metadata.num_row_groups == 4  # ceil(14 / 4)
    cand = pf.read().to_pandas()
    assert list(cand.columns) == ["user", "rank", "item", "score", "interest"]
    assert list(dict.fromkeys(cand["user"])) == list(dict.fromkeys(df["user_id"]))
    for user, rows in df.groupby("user_id", sort=False):
        history = list(rows.sort_values("timestamp", kind="stable")["item_id"])
        body = client.post("/recommend", json={"history": history, "n": 12, "exclude_history": exclude}).json()
        got = cand[cand["user"] == user]
        assert got["rank"].tolist() == list(range(1, len(got) + 1))
        assert_same(list(zip(got["item"], got["score"], got["interest"])), as_tuples(body))


def test_batch_refuses_a_user_that_reappears(env, tmp_path):
    item = env["bundle"].item_ids[0]
    log = tmp_path / "log.csv"
    log.write_text(f"user_id,item_id,timestamp\na,{item},1\nb,{item},2\nb,{item},3\nc,{item},1\na,{item},4\n")
    for batch_rows in (1, 2, 100):
        with pytest.raises(BatchInputError, match=r"data row 5: user 'a' appears again"):
            recommend_batch(env["bundle"], log, tmp_path / "out.parquet", n=5, progress=False,
                            batch_rows=batch_rows)
        assert not (tmp_path / "out.parquet").exists()


def test_batch_headerless_tsv_gzip(env, tmp_path):
    import gzip

    items = env["bundle"].item_ids
    log = tmp_path / "log.tsv.gz"
    with gzip.open(log, "wt") as fh:
        fh.write(f"u1\t{items[0]}\t5\nu1\t{items[1]}\t1\nu2\t{items[2]}\t1.5\n")
    stats = recommend_batch(env["bundle"], log, tmp_path / "out.parquet", n=3, progress=False)
    cand = pd.read_parquet(tmp_path / "out.parquet")
    assert stats["users"] == 2 and len(cand) == 6
    want = env["bundle"].recommend([items[1], items[0]], 3)
    assert cand[cand.user == "u1"]["item"].tolist() == [x["item"] for x in want["items"]]
