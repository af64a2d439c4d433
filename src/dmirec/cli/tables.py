"""Plain-text tables the command line prints (``dmirec evaluate`` and the demo)."""

from __future__ import annotations


def _metrics_table(metrics: dict, title: str = "") -> str:
    ns = sorted({int(k.split("@")[1]) for k in metrics if k.startswith("recall@")}) or [20, 50]
    rows = [("Recall", "recall"), ("HitRate", "hitrate"), ("NDCG", "ndcg"), ("NDCG (ComiRec)", "ndcg_comirec"),
            ("MRR", "mrr"), ("Coverage", "coverage")]
    rows = [(label, key) for label, key in rows if all(f"{key}@{n}" in metrics for n in ns)]
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'metric':<16}" + "".join(f"{'@' + str(n):>10}" for n in ns))
    for label, key in rows:
        lines.append(f"{label:<16}" + "".join(f"{metrics[f'{key}@{n}']:>10.4f}" for n in ns))
    skipped = f" (skipped, no new target: {metrics['skipped_users']})" if "skipped_users" in metrics else ""
    lines.append(f"users: {metrics['users']}{skipped}")
    return "\n".join(lines)
