"""``dmirec demo`` / ``make demo``: the product path on the shipped data, in a few minutes.

Runs ``dmirec fit`` on the shipped Amazon Beauty log (prepare, REMI backbone, the neighbour rule,
ItemKNN and EASE channels and their merger chosen on validation users, test metrics, a bundle),
trains DMI as the paper draws it on the frozen REMI backbone for a short step budget, and prints
one table of test metrics: the fitted recipe beside REMI, REMI + rule, DMI, ItemKNN, EASE and
most-popular. It writes the backbone's report and records what it measured (settings, commit,
machine, wall and CPU time) in ``WORKDIR/demo.json``. The demo's step budgets are smaller than the
benchmarks' (which train to early stopping): its numbers are a first look, BENCHMARKS.md has the
measured ones.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib.resources import as_file
from pathlib import Path
from typing import Any

import torch

from ..data.prepare import shipped_beauty_path
from ..evaluation.report import build_report
from ..pipeline.fit import BACKBONE, fit
from ..training.train import make_config, train

ROWS = (("recipe", "fitted recipe (served)"), ("itemknn", "ItemKNN"), ("rp3beta", "RP3beta"), ("ease", "EASE"),
        ("model", "REMI + neighbour rule"), ("remi", "REMI"), ("dmi", "DMI (refiner on frozen REMI)"),
        ("most-popular", "most-popular"))


def run_demo(workdir: str | Path = "demo_run", steps: int = 4000, seed: int = 2021, threads: int = 1,
             progress: bool = True, report: bool = True, report_users: int = 1000, dmi_steps: int = 1000) -> int:
    start = time.perf_counter()
    work = Path(workdir)
    fit_dir = work / "fit"
    if fit_dir.exists():
        shutil.rmtree(fit_dir)
    with as_file(shipped_beauty_path()) as log:
        print(f"dmirec fit {log.name} --out {fit_dir} --budget quick --max_steps={steps}")
        rows = fit(log, fit_dir, "quick", seed=seed, overrides={"max_steps": steps, "eval_every": max(steps // 4, 1)},
                   progress=progress, threads=threads)
    backbone = fit_dir / BACKBONE
    dmi_dir = work / "run-dmi"
    if dmi_dir.exists():
        shutil.rmtree(dmi_dir)
    cfg = make_config("dmi", [], {"max_steps": dmi_steps, "eval_every": max(dmi_steps // 2, 1), "seed": seed,
                                  "threads": threads, "progress": progress, "init_from": str(backbone),
                                  "freeze_backbone_steps": 10 ** 9})
    print(f"\ntraining DMI (the paper's refiner) on the frozen REMI backbone for {dmi_steps} steps")
    dmi = train(cfg, fit_dir / "data", dmi_dir)
    rows = {**rows, "dmi": {k: float(v) for k, v in dmi["test"].items() if "@" in k or k == "users"}}
    print("\n" + demo_table(rows))
    print(f"DMI's best validation checkpoint is step {dmi['best_step']} of {dmi['steps']} (step 0 is the frozen "
          f"REMI itself: the refiner is kept only when it beats REMI on validation users)")
    if report:
        try:
            out = build_report(backbone, work / "report" / "report.html", users=report_users)
            print(f"report of the backbone run: {out}")
        except ImportError as exc:
            print(f"no report: {exc}")
    wall = time.perf_counter() - start
    options = {"workdir": str(workdir), "steps": steps, "dmi_steps": dmi_steps, "seed": seed, "threads": threads,
               "report": report, "report_users": report_users}
    write_record(work / "demo.json", options, rows, {"dmi": cfg.to_dict()}, [], wall)
    print(f"wall time: {wall:.1f} s   fit: {fit_dir}   bundle: {fit_dir / 'bundle'} (dmirec serve {fit_dir / 'bundle'})"
          f"   record: {work / 'demo.json'}")
    return 0


def demo_table(rows: dict[str, dict[str, float]]) -> str:
    """The demo's table of test metrics, one row per method."""
    lines = [f"{'beauty, test users':<32}{'Recall@20':>11}{'Recall@50':>11}{'NDCG@50':>10}{'HitRate@50':>12}"]
    for key, label in ROWS:
        if key in rows:
            m = rows[key]
            lines.append(f"{label:<32}{m['recall@20']:>11.4f}{m['recall@50']:>11.4f}{m['ndcg@50']:>10.4f}"
                         f"{m['hitrate@50']:>12.4f}")
    return "\n".join(lines)


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
              "results": results, "configs": configs, "paired": tests}
    path.write_text(json.dumps(record, indent=2, default=str))
