"""``dmirec fit-repeat RUN_DIR``: choose the repeat channel's parameters on validation users.

The run's model ranks every validation user once (its top ``max(50, repeat_ref_rank)`` and the
best score of each history item under the user's interests); then every point of a small grid
(weight x recency x bias, the run's ``repeat_decay`` and ``repeat_ref_rank`` kept) is merged
(:func:`dmirec.repeats.channel.merge_channel`) and scored. The point with the best validation Recall@50
wins (ties: better Recall@20, then the smaller weight). Weight 0 (the model's list exactly) is in
the grid, so the chosen channel never lowers validation Recall@50. Test users are never seen.

The choice and the whole grid go to ``RUN_DIR/repeat.json`` (or ``--output``); evaluation and
export read it back with :func:`dmirec.repeats.params.with_repeat_params`. Only the ``params`` table is applied.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..config import Config, ConfigError
from ..data.dataset import load_dataset
from ..data.sampler import eval_split
from ..repeats.channel import RepeatChannel, history_features, history_item_scores, merge_channel
from ..repeats.params import REPEAT_FILE
from ..retrieval import make_searcher
from ..runs.rundir import atomic_write_text, load_trained_model, read_data_ref
from .evaluate import user_vectors
from .metrics import summarize

DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "weight": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
    "recency": (0.0, 0.5, 1.0, 2.0),
    "bias": (0.0, 0.5, 1.0),
}


@torch.no_grad()
def fit_channel(model, eval_set, cfg: Config, grid: dict[str, tuple[float, ...]] | None = None,
                backend: str = "auto", device: str | torch.device = "cpu", n: int = 50) -> dict[str, Any]:
    """Score every grid point on ``eval_set`` (validation users); returns the chosen params and the grid."""
    grid = grid or DEFAULT_GRID
    queries = user_vectors(model, eval_set, cfg.eval_batch_size, device)  # (U, K, D)
    items = model.item_embeddings().detach().float().cpu().numpy()  # (N + 1, D)
    searcher = make_searcher(items, backend)
    base = searcher.search(queries, max(n, cfg.repeat_ref_rank))  # (U, M)
    fill = searcher.search(queries, n, exclude=eval_set.full_history)  # (U, n)
    feats = history_features(eval_set.full_history, cfg.repeat_decay)
    hist_scores, hist_interest = history_item_scores(queries, items, feats)  # (H,), (H,)
    rows: list[dict[str, Any]] = []
    points = [(0.0, 0.0, 0.0)] + [p for p in itertools.product(grid["weight"], grid["recency"], grid["bias"])
                                  if p[0] != 0]  # every zero-weight point is the model's list: once
    for w, r, b in points:
        ch = RepeatChannel(float(w), float(r), float(b), cfg.repeat_decay, cfg.repeat_ref_rank)
        res = merge_channel(base, fill, feats, hist_scores, hist_interest, ch, n)
        m = summarize(res.ids, eval_set.targets, (20, n))
        rows.append({"weight": float(w), "recency": float(r), "bias": float(b),
                     "recall@20": m["recall@20"], f"recall@{n}": m[f"recall@{n}"]})
    best = max(rows, key=lambda x: (x[f"recall@{n}"], x["recall@20"], -x["weight"]))
    model_row = next(x for x in rows if x["weight"] == 0)
    params = {"repeat_channel": True, "repeat_weight": best["weight"], "repeat_recency": best["recency"],
              "repeat_bias": best["bias"], "repeat_decay": cfg.repeat_decay,
              "repeat_ref_rank": cfg.repeat_ref_rank}
    return {"params": params, "chosen": best, "model": model_row, "users": len(eval_set.targets),
            "metric": f"recall@{n}", "grid": rows}


def fit_repeat_run(run_dir: str | Path, output: str | Path | None = None, which: str = "best",
                   backend: str | None = None, max_users: int = 0,
                   grid: dict[str, tuple[float, ...]] | None = None) -> dict[str, Any]:
    """Fit the channel of a finished run on its validation users and write ``repeat.json``."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    model, cfg = load_trained_model(run_dir, which=which)
    data = load_dataset(read_data_ref(run_dir)["path"])
    valid = eval_split(data.splits["valid"], cfg.seq_len, max_users)
    if not valid.targets:
        raise ValueError(f"{run_dir}: the dataset has no validation users to fit the repeat channel on")
    record = fit_channel(model, valid, cfg, grid, backend or cfg.retrieval_backend)
    record.update(split="valid", run_dir=str(run_dir.resolve()), checkpoint=which, model_name=cfg.model,
                  dataset=data.name, seconds=round(time.perf_counter() - start, 2))
    out = Path(output) if output else run_dir / REPEAT_FILE
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    record["output"] = str(out)
    return record
