#!/usr/bin/env python
"""SASRec's benchmark records against REMI's, as the Markdown tables of docs/sasrec.md.

    python scripts/sasrec_summary.py            # prints the tables from bench_results/*.json

Reads bench_results/DATASET-sasrec-sSEED.json and DATASET-remi-sSEED.json (written by
scripts/bench.py) and the dropout check bench_results/beauty-sasrec-tune-d*-s2021.json. One row
per run (valid/test Recall@50, test Recall@20 and NDCG@50, steps, best step, training sequences
per second, wall time), then mean +- sd over the seeds a model has on a dataset.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench_results"
DATASETS = ("beauty", "sports", "gowalla")
MODELS = ("sasrec", "remi")


def records(dataset: str, model: str) -> list[dict]:
    """The main records of ``model`` on ``dataset``, by seed."""
    found = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{dataset}-{model}-s*.json"))]
    return sorted((r for r in found if r.get("name", r["model"]) == model), key=lambda r: r["seed"])


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "-"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def run_table() -> list[str]:
    lines = ["| dataset | model | seed | valid R@50 | test R@20 | test R@50 | test NDCG@50 | steps | best step "
             "| train seq/s | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset in DATASETS:
        for model in MODELS:
            for r in records(dataset, model):
                t = r["test"]
                lines.append(f"| {dataset} | {model} | {r['seed']} | {r['valid_recall@50']:.4f} | {t['recall@20']:.4f} "
                             f"| {t['recall@50']:.4f} | {t['ndcg@50']:.4f} | {r['steps']} | {r['best_step']} "
                             f"| {r['train_seq_per_s']:.0f} | {r['wall_s_last_call']:.0f} |")
    return lines


def mean_table() -> list[str]:
    lines = ["| dataset | model | seeds | test R@20 | test R@50 | test NDCG@50 |", "|---|---|---|---|---|---|"]
    for dataset in DATASETS:
        for model in MODELS:
            rs = records(dataset, model)
            if not rs:
                continue
            cells = [mean_sd([r["test"][k] for r in rs]) for k in ("recall@20", "recall@50", "ndcg@50")]
            lines.append(f"| {dataset} | {model} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |")
    return lines


def tune_table() -> list[str]:
    lines = ["| sasrec_dropout | best valid R@50 | at step | steps |", "|---|---|---|---|"]
    for path in sorted(RESULTS.glob("beauty-sasrec-tune-d*-s2021.json")):
        r = json.loads(path.read_text())
        lines.append(f"| {r['resolved_config']['sasrec_dropout']} | {r['valid_recall@50']:.4f} | {r['best_step']} "
                     f"| {r['steps']} |")
    return lines


if __name__ == "__main__":
    print("\n".join(tune_table() + [""] + run_table() + [""] + mean_table()))
