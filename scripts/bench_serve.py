#!/usr/bin/env python
"""Latency of the HTTP service at fixed request rates: real server, real HTTP, open loop.

Starts ``python -m dmirec.serving.app BUNDLE`` (uvicorn) on a free loopback port, waits for
``/health``, warms up, then for each rate sends requests on a fixed schedule (request i at
t0 + i / rate, whether or not earlier ones have answered: an open-loop generator, so a slow
server shows up as latency instead of being hidden by a client that waits) with asyncio + httpx.
Latency is measured from the *scheduled* send time to the end of the response, so client-side
queueing is counted too (no coordinated omission); ``send_lag_p99_ms`` reports how late the
client itself was, which flags a saturated load generator.

Histories come from ``--histories FILE`` (JSON lines of raw-id lists, as written by
scripts/gen_catalogue.py beside its bundle; used automatically when present), else from random
catalogue items. Results go to ``--out`` (default bench_results/serve.json, one entry per
``--label``) and a markdown table to stdout.

    .venv/bin/python scripts/bench_serve.py BUNDLE --rates 50,100,200 --duration 10
    .venv/bin/python scripts/bench_serve.py BUNDLE --rates 100,200,400 --workers 2 --out bench_results/serve-load.json
    .venv/bin/python scripts/bench_serve.py BUNDLE --rates 100 --repeat 3     # the same rate three times in a row

``--workers`` runs ``dmirec serve --workers N`` (N processes on one port); the server's limits
(``--max-inflight``) are recorded, and answers refused with 503 are counted apart.

``--pin`` puts the server on CPU 1 and the load generator on CPU 0 (Linux), so the two do not
fight over one core; on a shared machine other processes still contaminate the numbers, which
is why the load average before and after each run is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` and its worker processes (uvicorn --workers)."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            if p == pid:
                return None
    return total


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def load_histories(bundle: Path, path: Path | None, count: int, seq_len: int, seed: int) -> list[list[str]]:
    default = bundle.parent / f"{bundle.name}.histories.jsonl"
    path = path or (default if default.exists() else None)
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    ids = (bundle / "item_ids.txt").read_text(encoding="utf-8").split("\n")[:-1]
    rng = random.Random(seed)
    return [[rng.choice(ids) for _ in range(rng.randint(1, 2 * seq_len))] for _ in range(count)]


def start_server(bundle: Path, port: int, threads: int, pin: bool, workers: int = 1,
                 max_inflight: int | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dmirec.serving.app", str(bundle), "--port", str(port), "--threads", str(threads),
           "--log-level", "warning", "--workers", str(workers)]
    if max_inflight is not None:
        cmd += ["--max-inflight", str(max_inflight)]
    preexec = (lambda: os.sched_setaffinity(0, {1})) if pin else None
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(cmd, preexec_fn=preexec, env=env)


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            r = httpx.get(f"{base}/health", timeout=1)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy after {timeout} s")


async def run_rate(base: str, bodies: list[dict], rate: float, count: int) -> dict:
    """Send ``count`` requests at ``rate`` per second on a fixed schedule; collect timings."""
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    records: list[tuple[float, float, float, int]] = []  # scheduled, sent, done, status
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        # open the connections the run will need, outside the measurement
        await asyncio.gather(*[client.get("/health") for _ in range(min(64, count))])

        async def one(i: int, scheduled: float) -> None:
            sent = time.perf_counter()
            try:
                r = await client.post("/recommend", json=bodies[i % len(bodies)])
                status = r.status_code
            except httpx.HTTPError:
                status = -1
            records.append((scheduled, sent, time.perf_counter(), status))

        tasks = []
        t0 = time.perf_counter() + 0.05
        for i in range(count):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
    arr = np.array(records)  # (R, 4)
    ok = arr[:, 3] == 200
    lat = (arr[ok, 2] - arr[ok, 0]) * 1e3  # ms from the scheduled time
    service = (arr[ok, 2] - arr[ok, 1]) * 1e3
    lag = (arr[:, 1] - arr[:, 0]) * 1e3
    span = arr[:, 2].max() - arr[:, 0].min()
    pct = (lambda a, q: float(np.percentile(a, q)) if len(a) else None)
    return {
        "rate": rate, "requests": count, "ok": int(ok.sum()), "errors": int((~ok).sum()),
        "rejected_503": int((arr[:, 3] == 503).sum()),
        "achieved_rps": round(float(ok.sum() / span), 1) if span > 0 else None,
        "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99), "max_ms": pct(lat, 100),
        "mean_ms": float(lat.mean()) if len(lat) else None,
        "service_p99_ms": pct(service, 99), "send_lag_p99_ms": pct(lag, 99),
    }


def markdown(entry: dict) -> str:
    idx = entry["metadata"]["index"]
    rec = idx.get("recall") or {}
    head = (f"bundle `{entry['bundle']}`: {entry['metadata']['catalogue_size']:,} items, index {idx['kind']}"
            + (f" (recall@{rec['n']} {rec['merged']:.4f} vs exact)" if rec.get("merged") is not None else "")
            + f", n={entry['settings']['n']}, server threads={entry['settings']['threads']}, "
            f"workers={entry['settings'].get('workers', 1)}, max in flight={entry['settings'].get('max_inflight')}, "
            f"pinned={entry['settings']['pin']}, cores={entry['machine']['cpus']}")
    lines = [head, "",
             "| rate (req/s) | requests | errors (503) | achieved (req/s) | p50 ms | p95 ms | p99 ms | max ms | server CPU ms/req | load avg |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in entry["results"]:
        f = (lambda v: f"{v:.2f}" if isinstance(v, float) else "-")
        lines.append(f"| {r['rate']:g} | {r['requests']} | {r['errors']} ({r.get('rejected_503', 0)}) | {r['achieved_rps']} | {f(r['p50_ms'])} | "
                     f"{f(r['p95_ms'])} | {f(r['p99_ms'])} | {f(r['max_ms'])} | {f(r.get('server_cpu_ms_per_request'))} | "
                     f"{r['load_before']:.1f} -> {r['load_after']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--rates", default="50,100,200", help="comma-separated request rates (req/s)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    p.add_argument("--repeat", type=int, default=1, help="measure each rate this many times in a row (run-to-run spread)")
    p.add_argument("--max-requests", type=int, default=5000, help="cap on requests per rate")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--exclude-history", action="store_true")
    p.add_argument("--histories", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1, help="server torch/faiss intra-op threads")
    p.add_argument("--pin", action="store_true", help="server on CPU 1, load generator on CPU 0")
    p.add_argument("--warmup", type=int, default=200, help="sequential warm-up requests")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=REPO / "bench_results" / "serve.json")
    p.add_argument("--label", default=None, help="key of this run in --out (default: bundle name + index kind)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="server worker processes (dmirec serve --workers)")
    p.add_argument("--max-inflight", type=int, default=None, help="server limit per worker (default: the server's)")
    args = p.parse_args(argv)
    wall0 = time.perf_counter()

    from dmirec.serving.bundle import read_manifest

    manifest = read_manifest(args.bundle)
    histories = load_histories(args.bundle, args.histories, 2000, int(manifest.get("seq_len", 20)), args.seed)
    bodies = [{"history": h, "n": args.n, "exclude_history": args.exclude_history} for h in histories]
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if args.pin:
        os.sched_setaffinity(0, {0})
    t_start = time.perf_counter()
    proc = start_server(args.bundle, port, args.threads, args.pin, args.workers, args.max_inflight)
    try:
        wait_healthy(base, proc, args.startup_timeout)
        startup = time.perf_counter() - t_start
        meta = httpx.get(f"{base}/metadata", timeout=10).json()
        with httpx.Client(base_url=base, timeout=60) as c:
            for i in range(args.warmup):
                c.post("/recommend", json=bodies[i % len(bodies)]).raise_for_status()
        results = []
        for rate, repeat in [(r, i) for r in rates for i in range(1, args.repeat + 1)]:
            count = max(1, min(args.max_requests, int(rate * args.duration)))
            load_before = os.getloadavg()[0]
            cpu0 = cpu_seconds(proc.pid)
            # The generator's own garbage collector must not pause the schedule: a full collection
            # of this process (torch and pydantic imported for read_manifest) takes 100-160 ms here
            # and showed up as server latency. Freeze what exists, collect nothing during the run.
            gc.collect()
            gc.freeze()
            gc.disable()
            try:
                res = asyncio.run(run_rate(base, bodies, rate, count))
            finally:
                gc.enable()
                gc.unfreeze()
            cpu1 = cpu_seconds(proc.pid)
            res["load_before"], res["load_after"] = load_before, os.getloadavg()[0]
            res["repeat"] = repeat
            if cpu0 is not None and cpu1 is not None:
                res["server_cpu_ms_per_request"] = (cpu1 - cpu0) * 1e3 / count
            results.append(res)
            print(f"rate {rate:g}/s: p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, "
                  f"{res['achieved_rps']} req/s, {res['errors']} errors", file=sys.stderr)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    entry = {
        "bundle": str(args.bundle),
        "metadata": meta,
        "settings": {"rates": rates, "duration_s": args.duration, "max_requests": args.max_requests, "repeat": args.repeat, "n": args.n,
                     "exclude_history": args.exclude_history, "threads": args.threads, "pin": args.pin,
                     "histories": len(histories), "warmup": args.warmup,
                     "generator": "asyncio+httpx open loop, generator gc off during each rate",
                     "workers": args.workers, "max_inflight": meta.get("limits", {}).get("max_inflight"),
                     "body_timeout_s": meta.get("limits", {}).get("body_timeout_s"), "seed": args.seed},
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "git_commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "server_startup_s": round(startup, 2),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
        "wall_s": round(time.perf_counter() - wall0, 1),
    }
    label = args.label or f"{args.bundle.name}-{meta['index']['kind']}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    existing[label] = entry
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    print(markdown(entry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
