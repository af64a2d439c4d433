"""The neighbour rule's setting (n, alpha) chosen on a finished run's validation users.

The rule (COIN's training-free neighbour rule, :mod:`dmirec.collab.neighbours`) moves every query vector
towards the mean interests of its n most similar training users, with weight alpha. For every
(n, alpha) of the grid, and alpha 0 (no rule), the run's model ranks the validation users; the
highest validation Recall@50 wins, settings within ``tie`` of it count as tied and the smallest
alpha (then the smallest n) among them is chosen. The bank of training users' interests is built
once (it does not depend on n or alpha). Test users are never seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..evaluation.evaluate import METRIC_NS, evaluate_model, load_run


def select_rule(run_dir: str | Path, grid: dict[str, list[float]], tie: float = 0.0005,
                log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """``{"neighbour_alpha": a, "neighbours": n, "grid": [...], "valid_recall@50": r}`` for ``run_dir``."""
    model, cfg, data = load_run(run_dir, "best", "cpu", {"neighbour_alpha": 1.0})  # builds the bank once

    def valid_recall(alpha: float, n: int) -> float:
        model.neighbour_alpha, model.neighbours = float(alpha), int(n)
        m = evaluate_model(model, data, "valid", cfg.seq_len, METRIC_NS, cfg.retrieval_backend, cfg.exclude_history,
                           cfg.eval_batch_size)
        return float(m["recall@50"])

    rows = [{"neighbours": 0, "alpha": 0.0, "recall@50": valid_recall(0.0, 1)}]
    log(f"no rule: valid recall@50 {rows[0]['recall@50']:.4f}")
    for n in grid["neighbours"]:
        for alpha in grid["alpha"]:
            rows.append({"neighbours": int(n), "alpha": float(alpha), "recall@50": valid_recall(alpha, n)})
            log(f"n={n} alpha={alpha}: valid recall@50 {rows[-1]['recall@50']:.4f}")
    top = max(r["recall@50"] for r in rows)
    chosen = min((r for r in rows if r["recall@50"] >= top - tie), key=lambda r: (r["alpha"], r["neighbours"]))
    return {"neighbour_alpha": chosen["alpha"], "neighbours": chosen["neighbours"] or int(cfg.neighbours),
            "valid_recall@50": chosen["recall@50"], "grid": rows, "tie": tie}
