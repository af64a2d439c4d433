"""``dmirec demo`` / ``make demo``: the main job on the shipped data, in a few minutes.

Prepares the shipped Amazon Beauty log, trains REMI and DMI (the default config, whose backbone
is REMI) for the same step budget and seed, prints both metric tables and ``dmirec compare``'s
table with the per-user paired test, writes the DMI run's report, and records what it measured
(resolved configs, git commit, machine, wall and CPU time) in ``WORKDIR/demo.json``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data.prepare import prepare_shipped_beauty
from ..evaluation.compare import compare, to_markdown
from ..evaluation.report import build_report
from ..training.train import make_config, train
from .tables import _metrics_table

MODELS = ("remi", "dmi")  # the backbone first: it is the baseline of the paired test


def run_demo(workdir: str | Path = "demo_run", steps: int = 4000, seed: int = 2021, threads: int = 1,
             progress: bool = True, report: bool = True, report_users: int = 1000) -> int:
    start = time.perf_counter()
    work = Path(workdir)
    data_dir = work / "beauty"
    print(prepare_shipped_beauty(data_dir).summary())
    runs, results, configs = [], {}, {}
    for model in MODELS:
        run_dir = work / f"run-{model}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        cfg = make_config(model, [], {"max_steps": steps, "eval_every": max(steps // 4, 1), "seed": seed,
                                      "threads": threads, "progress": progress})
        print(f"\ntraining {model} for {cfg.max_steps} steps (batch {cfg.batch_size}, seed {cfg.seed}); the full "
              f"benchmark runs to early stopping, see BENCHMARKS.md")
        result = train(cfg, data_dir, run_dir)
        print(_metrics_table(result["test"], f"{model} on beauty, test users, {result['steps']} steps "
                                             f"(best step {result['best_step']})"))
        runs.append(run_dir)
        results[model], configs[model] = result, cfg.to_dict()

    c = compare(runs, metric="recall@50", resamples=1000)
    print("\n" + to_markdown(c))
    chart = work / "compare.png"
    if c["chart"]:
        chart.write_bytes(c["chart"])
    (work / "compare.md").write_text(to_markdown(c, chart.name if c["chart"] else None), encoding="utf-8")
    if report:
        try:
            out = build_report(runs[-1], work / "report" / "report.html", users=report_users)
            print(f"report of the DMI run (refined vs its coarse REMI interests): {out}")
        except ImportError as exc:
            print(f"no report: {exc}")
    wall = time.perf_counter() - start
    options = {"workdir": str(workdir), "steps": steps, "seed": seed, "threads": threads, "report": report,
               "report_users": report_users}
    write_record(work / "demo.json", options, results, configs, c["tests"], wall)
    print(f"wall time: {wall:.1f} s   runs: {', '.join(map(str, runs))}   comparison: {work / 'compare.md'}   "
          f"record: {work / 'demo.json'}")
    return 0


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def write_record(path: Path, options: dict[str, Any], results: dict, configs: dict, tests: list[dict],
                 wall: float) -> None:
    """What the demo measured, with the resolved configs, the commit, the machine and the times."""
    record = {"command": "dmirec demo", "options": options, "git_commit": _git_commit(), "wall_s": round(wall, 1),
              "cpu_s": round(time.process_time(), 1),
              "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_avg_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                          "python": platform.python_version(), "torch": torch.__version__,
                          "argv": sys.argv[1:]},
              "runs": results, "configs": configs, "paired": tests}
    path.write_text(json.dumps(record, indent=2, default=str))
