"""Every run of every benchmark suite (configs/bench/*.yaml) resolves to a valid config and builds its
model, so a typo in a suite fails here instead of hours into a benchmark lane."""

from pathlib import Path

import pytest
import yaml

from dmirec.config import make_config
from dmirec.models import build_model

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted(p for p in (ROOT / "configs" / "bench").glob("*.yaml")
                if "runs" in (yaml.safe_load(p.read_text()) or {}))


def suite_runs():
    for path in SUITES:
        for entry in yaml.safe_load(path.read_text())["runs"]:
            yield pytest.param(entry, id=f"{path.stem}:{entry['dataset']}/{entry.get('name', entry['model'])}")


def overrides(extra: list[str], seed: int) -> dict[str, str]:
    """``["--key=value", ...]`` (the suite's form) as config overrides; ``{runs}``/``{seed}`` filled in."""
    out = {}
    for arg in extra:
        assert arg.startswith("--") and "=" in arg, f"suite flag {arg!r} is not --key=value"
        key, value = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        assert key not in out, f"suite flag --{key} given twice"
        out[key] = value.format(runs="/nonexistent/runs", seed=seed)
    return out


def test_there_are_suites():
    assert len(SUITES) >= 5


@pytest.mark.parametrize("entry", list(suite_runs()))
def test_suite_run_resolves_and_builds(entry):
    files = [ROOT / entry["config"]] if entry.get("config") else []
    for f in files:
        assert f.exists(), f"{entry}: config file {f} is missing"
    assert (ROOT / "configs" / "datasets" / f"{entry['dataset']}.yaml").exists()
    for seed in entry.get("seeds", [2021]):
        cfg = make_config(entry["model"], files, {**overrides(entry.get("extra", []), seed), "seed": seed})
        assert cfg.model == entry["model"] and cfg.seed == seed
    build_model(cfg, num_items=50)
