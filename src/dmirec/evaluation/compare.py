"""``dmirec compare RUN_DIR...``: test metrics of several runs, grouped, with seed spread and a paired test.

Runs are grouped by their resolved config minus the seed (and minus keys that do not change
the result: progress bar, threads, device, evaluation batch size, TensorBoard, extra metric
cutoffs; a warm start counts only as "set"), or by the config keys named with ``--by`` (the
dataset always splits groups). Each group shows mean ± sample sd over its runs (the seeds). A bar chart shows the
group means with every run as a dot. Between a baseline group (the first, or ``--baseline``)
and every other group on the same test users, a per-user paired comparison: each user's metric
averaged over the group's runs, the mean difference with a paired bootstrap confidence interval
over users, and a two-sided sign test (users whose value differs).

The statistics are plain functions (:func:`mean_sd`, :func:`format_mean_sd`,
:func:`paired_bootstrap`, :func:`sign_test`) that ``scripts/bench_report.py`` also uses.
"""

from __future__ import annotations

import base64
import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config.schema import WRAPPERS
from ..runs.rundir import check_data, read_data_ref
from .evaluate import evaluate_run

IGNORED_KEYS = ("seed", "progress", "threads", "device", "eval_batch_size", "tensorboard", "metric_ns")
TABLE_KEYS = ("recall@20", "recall@50", "hitrate@20", "hitrate@50", "ndcg@20", "ndcg@50", "mrr@50")


# ---- statistics -------------------------------------------------------------------------------
def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); sd is None for a single value."""
    if not values:
        raise ValueError("mean_sd of no values")
    mean = statistics.mean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def format_mean_sd(values: list[float], digits: int = 4) -> str:
    """``"0.1234"`` for one value, ``"0.1234 ± 0.0012"`` (mean ± sample sd) for several."""
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` over paired users and its percentile bootstrap interval (users resampled)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired values need two equal non-empty vectors, got {a.shape} and {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for s in range(0, resamples, 256):  # bounded memory: 256 resamples at a time
        m = min(256, resamples - s)
        means[s:s + m] = d[rng.integers(0, d.size, size=(m, d.size))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return {"mean_diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "level": level,
            "resamples": resamples, "users": int(d.size)}


def sign_test(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Two-sided exact sign test of ``a`` vs ``b`` over users whose values differ."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    n = wins + losses
    if n == 0:
        return {"wins": 0, "losses": 0, "ties": int(d.size), "p_value": 1.0}
    k = min(wins, losses)
    # P(X <= k) for X ~ Bin(n, 1/2), summed in log space
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    cdf = math.exp(top) * sum(math.exp(x - top) for x in logs)
    return {"wins": wins, "losses": losses, "ties": int(d.size - n), "p_value": min(1.0, 2 * cdf)}


# ---- runs and groups --------------------------------------------------------------------------
@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    dataset: str
    data_path: str
    seed: int
    test: dict[str, Any]
    split: str = ""  # the prepared data's fingerprint (its folder for runs recorded without one)
    overrides: dict[str, Any] | None = None  # evaluation-time config changes the test metrics were measured with


@dataclass
class Group:
    key: tuple
    label: str = ""
    runs: list[Run] = field(default_factory=list)


def read_run_record(run_dir: str | Path) -> Run:
    """A finished run: its resolved config, dataset and the test metrics in ``result.json``."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        raise FileNotFoundError(f"{run_dir}: the run has not finished (no result.json)")
    config = yaml.safe_load(cfg_path.read_text())
    result = json.loads(result_path.read_text())
    ref = read_data_ref(run_dir)
    check_data(run_dir)  # the folder prepared again since the run: its metrics are not of this data
    split = (ref.get("fingerprint") or {}).get("sha256") or f"folder {ref['path']}"
    return Run(run_dir, config, result.get("dataset", ref.get("name", "?")), ref["path"], int(config.get("seed", 0)),
               result["test"], split)


def check_splits(runs: list[Run], unpaired: bool) -> None:
    """Runs of one dataset name must share one split (the same prepared arrays): runs on different
    splits of a log are not seeds of one model. Refused unless ``unpaired`` (then the split is
    part of each group's identity and such groups are never paired)."""
    by_name: dict[str, dict[str, list[Run]]] = {}
    for r in runs:
        by_name.setdefault(r.dataset, {}).setdefault(r.split, []).append(r)
    for name, splits in by_name.items():
        if len(splits) > 1 and not unpaired:
            first, other = (group[0] for group in list(splits.values())[:2])
            raise ValueError(f"{first.path} and {other.path} were trained on different splits of {name!r} "
                             f"({first.data_path} and {other.data_path} hold different prepared arrays: another "
                             f"seed, core or log); their metrics are not comparable as seeds of one model. "
                             f"Pass --unpaired to show them as separate groups, never paired")


def _wrappers() -> set[str]:
    return set(WRAPPERS)


_WRAPPERS = _wrappers()


def _identity(config: dict[str, Any], by: list[str] | None) -> dict[str, Any]:
    if by:
        missing = [k for k in by if k not in config]
        if missing:
            raise ValueError(f"--by: unknown config key(s) {missing}")
        return {k: config[k] for k in by}
    out = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    if out.get("model") not in _WRAPPERS:
        out.pop("backbone", None)  # only wrappers (DMI) use it
    if "init_from" in out:
        out["init_from"] = bool(out["init_from"])  # each seed warm-starts from its own run: keep only "set"
    return out


def group_runs(runs: list[Run], by: list[str] | None = None) -> list[Group]:
    """Groups in first-seen order, each labelled by its model and the config values that tell it from
    the other groups of the same model. Runs on different splits of a dataset (``--unpaired``) are
    in different groups, labelled ``split=`` and the fingerprint's start."""
    groups: dict[tuple, Group] = {}
    several = {r.dataset for r in runs if len({q.split for q in runs if q.dataset == r.dataset}) > 1}
    for r in runs:
        ident = {"dataset": r.dataset, **_identity(r.config, by)}
        if r.dataset in several:
            ident["split"] = r.split[:12]
        key = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in ident.items()))
        groups.setdefault(key, Group(key)).runs.append(r)
    for g in groups.values():
        # the model name, then the values that tell this group from the other groups of the same model
        ident = dict(g.key)
        peers = [dict(h.key) for h in groups.values() if dict(h.key).get("model") == ident.get("model")]
        keys = sorted({k for p in peers for k in p} - {"model"})
        differing = [k for k in keys if len({p.get(k) for p in peers}) > 1]
        head = [json.loads(ident["model"])] if "model" in ident else []
        shown = differing if differing or head else sorted(set(ident) - {"dataset"})
        g.label = ", ".join(head + [f"{k}={json.loads(ident[k])}" for k in shown if k in ident])
        seeds = [r.seed for r in g.runs]
        if by is None and len(seeds) != len(set(seeds)):  # same config, same seed: the same run twice
            raise ValueError(f"group {g.label!r} holds two runs with the same seed ({', '.join(str(r.path) for r in g.runs)}); "
                             "they are not independent repeats")
    return list(groups.values())


def table_rows(groups: list[Group], keys: tuple[str, ...] = TABLE_KEYS) -> tuple[list[str], list[list[str]]]:
    """Header and rows: group, runs (seeds), then mean ± sd of each metric present in every run."""
    present = [k for k in keys if all(k in r.test for g in groups for r in g.runs)]
    header = ["group", "seeds"] + present
    rows = [[g.label, ",".join(str(r.seed) for r in g.runs)]
            + [format_mean_sd([r.test[k] for r in g.runs]) for k in present] for g in groups]
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def per_user_values(run: Run, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, per-user ``metric``) of a run's best checkpoint on its test users."""
    n = int(metric.split("@")[1]) if "@" in metric else 50
    res = evaluate_run(run.path, split="test", ns=(n,), per_user=True, overrides=run.overrides)
    if metric not in res["per_user"]:
        raise ValueError(f"--metric {metric!r} is not a per-user metric; use e.g. recall@50, ndcg@20, mrr@50")
    return res["per_user"]["user"], res["per_user"][metric]


def paired_comparisons(groups: list[Group], metric: str, baseline: str | None = None, resamples: int = 2000,
                       seed: int = 0) -> list[dict[str, Any]]:
    """Every group against the baseline group on the same test users (per-user means over seeds)."""
    if len(groups) < 2:
        return []
    base = groups[0]
    if baseline is not None:
        match = [g for g in groups if g.label == baseline] or [g for g in groups if baseline in g.label]
        if not match:
            raise ValueError(f"--baseline {baseline!r} matches no group ({[g.label for g in groups]})")
        base = match[0]
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def group_values(g: Group) -> tuple[np.ndarray, np.ndarray]:
        if id(g) not in cache:
            parts = [per_user_values(r, metric) for r in g.runs]
            users = parts[0][0]
            for r, (u, _) in zip(g.runs, parts):
                if not np.array_equal(u, users):
                    raise ValueError(f"{r.path}: its test users differ from {g.runs[0].path}'s")
            cache[id(g)] = users, np.mean([v for _, v in parts], axis=0)
        return cache[id(g)]

    out = []
    bu, bv = group_values(base)
    for g in groups:
        if g is base:
            continue
        if g.runs[0].data_path != base.runs[0].data_path or g.runs[0].split != base.runs[0].split:
            out.append({"group": g.label, "baseline": base.label, "skipped": "another dataset or split"})
            continue
        gu, gv = group_values(g)
        if not np.array_equal(gu, bu):
            raise ValueError(f"groups {g.label!r} and {base.label!r} were tested on different users")
        out.append({"group": g.label, "baseline": base.label, "metric": metric,
                    **paired_bootstrap(gv, bv, resamples, seed), **sign_test(gv, bv)})
    return out


# ---- output -----------------------------------------------------------------------------------
def bar_chart(groups: list[Group], metric: str) -> bytes | None:
    """PNG of the group means of ``metric`` with every run as a dot and ± sd bars; None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(groups) + 1), 3.6))
    for i, g in enumerate(groups):
        vals = [r.test[metric] for r in g.runs]
        mean, sd = mean_sd(vals)
        ax.bar(i, mean, color="tab:blue", alpha=0.7, yerr=sd or 0.0, capsize=5)
        ax.scatter([i] * len(vals), vals, color="black", s=14, zorder=3)
    ax.set_xticks(range(len(groups)), [g.label for g in groups], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel=f"test {metric}", title=f"test {metric}: mean ± sd over seeds, dots = runs")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def paired_lines(tests: list[dict[str, Any]]) -> list[str]:
    lines = []
    for t in tests:
        if "skipped" in t:
            lines.append(f"- {t['group']} vs {t['baseline']}: not paired ({t['skipped']})")
            continue
        lines.append(f"- {t['group']} vs {t['baseline']}, per-user test {t['metric']} on {t['users']} users: "
                     f"mean difference {t['mean_diff']:+.4f}, {int(t['level'] * 100)}% paired bootstrap CI "
                     f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}] ({t['resamples']} resamples); sign test "
                     f"{t['wins']} better / {t['losses']} worse / {t['ties']} tied, p = {t['p_value']:.3g}")
    return lines


def compare(run_dirs: list[str | Path], by: list[str] | None = None, metric: str = "recall@50",
            paired: bool = True, baseline: str | None = None, resamples: int = 2000, seed: int = 0,
            overrides: dict[str, Any] | None = None, unpaired: bool = False) -> dict[str, Any]:
    """Everything ``dmirec compare`` prints: groups, the table, the paired tests and the chart.

    ``overrides``: evaluation-time config changes applied to every run (e.g. the neighbour rule);
    the runs' test metrics are then measured with them instead of read from ``result.json``.
    ``unpaired``: accept runs on different splits of one dataset (see :func:`check_splits`)."""
    runs = [read_run_record(d) for d in run_dirs]
    if overrides:
        for run in runs:
            run.config.update({k.replace("-", "_"): v for k, v in overrides.items()})
            run.test = evaluate_run(run.path, split="test", overrides=overrides)
            run.overrides = dict(overrides)
    if not runs:
        raise ValueError("compare needs at least one run directory")
    check_splits(runs, unpaired)
    groups = group_runs(runs, by)
    header, rows = table_rows(groups)
    tests = paired_comparisons(groups, metric, baseline, resamples, seed) if paired else []
    return {"groups": groups, "header": header, "rows": rows, "tests": tests, "metric": metric,
            "chart": bar_chart(groups, metric)}


def to_markdown(c: dict[str, Any], chart_name: str | None = None) -> str:
    lines = ["# dmirec compare", "", "Test users; mean ± sample sd over the runs of a group (seeds column).", "",
             markdown_table(c["header"], c["rows"]), ""]
    for g in c["groups"]:
        lines.append(f"- {g.label}: " + ", ".join(str(r.path) for r in g.runs))
    if c["tests"]:
        lines += ["", "Paired comparison against the baseline (each user's value averaged over a group's runs):", ""]
        lines += paired_lines(c["tests"])
    if chart_name:
        lines += ["", f"![test {c['metric']}]({chart_name})"]
    return "\n".join(lines) + "\n"


def to_html(c: dict[str, Any]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in c["header"])
    body = "".join("<tr>" + "".join(f"<td>{e(x)}</td>" for x in row) + "</tr>" for row in c["rows"])
    img = ""
    if c["chart"]:
        img = f'<img src="data:image/png;base64,{base64.b64encode(c["chart"]).decode("ascii")}" alt="bar chart">'
    tests = "".join(f"<li>{e(line[2:])}</li>" for line in paired_lines(c["tests"]))
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>dmirec compare</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body><h1>dmirec compare</h1>"
            "<p>Test users; mean ± sample sd over the runs of a group.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{img}<ul>{tests}</ul></body></html>\n")


def write_outputs(c: dict, out: str | Path) -> Path:
    """Write a comparison to ``out``: HTML (chart embedded), or markdown with the chart as a PNG beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".html":
        out.write_text(to_html(c), encoding="utf-8")
        return out
    chart = None
    if c["chart"]:
        chart = out.with_suffix(".png")
        chart.write_bytes(c["chart"])
    out.write_text(to_markdown(c, chart.name if chart else None), encoding="utf-8")
    return out
