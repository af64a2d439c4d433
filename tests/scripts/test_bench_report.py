"""The benchmark report's seed-by-seed comparison of collaborative DMI rows (scripts/bench_report.py)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "scripts" / "bench_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rec(seed, r50, extra=()):
    return {"seed": seed, "test": {"recall@50": r50}, "extra": list(extra)}


def test_paired_rows_subtract_within_a_seed_and_use_shared_seeds_only(report):
    after = ["--init_from=runs/beauty-remi-s{seed}"]
    main = {("beauty", "remi"): [rec(1, 0.10), rec(2, 0.20), rec(3, 0.30)],
            ("beauty", "dmi-collab-target"): [rec(1, 0.13, after), rec(2, 0.21, after), rec(3, 0.36, after)],
            ("beauty", "dmi-collab-target-ctl-no-noise"): [rec(2, 0.25)],
            ("gowalla", "remi"): [rec(1, 0.5)]}
    rules = {("beauty", "remi"): [rec(1, 0.12), rec(3, 0.33)]}
    lines = report._collab_paired("beauty", main, rules)
    rows = {line.split(" | ")[1]: line for line in lines if line.startswith("| DMI")}
    assert "+0.0300 +0.0100 +0.0600" in rows["REMI"] and "| 1,2,3 |" in rows["REMI"]
    assert "0.0333 ± 0.0252" in rows["REMI"]
    assert "| 1,3 |" in rows["REMI + neighbour rule"] and "+0.0100 +0.0300" in rows["REMI + neighbour rule"]
    control = rows["control: DMI collaborative + target without noise"]
    assert "| 2 |" in control and "-0.0400" in control


def test_rows_trained_from_scratch_are_not_paired_with_remi(report):
    main = {("gowalla", "remi"): [rec(1, 0.28)],
            ("gowalla", "dmi-collab-joint"): [rec(1, 0.29)],
            ("gowalla", "dmi-collab-joint-ctl-no-noise"): [rec(1, 0.27)]}
    lines = report._collab_paired("gowalla", main, {("gowalla", "remi"): [rec(1, 0.285)]})
    minus = [line.split(" | ")[1] for line in lines if line.startswith("| DMI")]
    assert minus == ["control: DMI collaborative joint without noise"]
    assert report._collab_paired("sports", main, {}) == []
