"""What ``dmirec fit`` derives from the data, and what each budget spends.

:func:`derive_settings` reads a prepared dataset and writes down the settings the product path
uses (all stored in ``recipe.yaml``):

* ``seq_len``: the model's input length, the smallest of 20, 40 and 80 that is at least the median
  training history length (20 on purchase logs such as Amazon's, 40 on check-in logs such as
  Gowalla's: the values the ComiRec/REMI protocol uses for them);
* ``repeat_share``: the share of validation targets that repeat an item of the user's history;
  above :data:`REPEAT_SHARE` the repeat ranking is one of the channels;
* ``ease``: whether EASE fits (catalogue at most ``ease_max_items``).

:data:`BUDGETS` says how much each budget trains and searches: ``quick`` is a first look (a short
backbone run that says it is under-trained; small grids), ``standard`` trains the backbone to early
stopping (patience 10 validations, as the benchmarks) with the default grids, ``full`` adds wider
grids. ``quick`` leaves EASE out (its dense inverse is the slowest fit: minutes at 12k items on one
core).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.dataset import PreparedData
from ..data.sampler import eval_split

REPEAT_SHARE = 0.05
SEQ_LENS = (20, 40, 80)

BUDGETS: dict[str, dict[str, Any]] = {
    "quick": {
        "backbone": {"max_steps": 2000, "eval_every": 500, "patience": 10},
        "rule_grid": {"neighbours": [8], "alpha": [0.5, 1.6]},
        "itemknn_grid": [{"itemknn_shrink": 50.0, "itemknn_neighbours": 200}],
        "rp3beta_grid": [{"rp3beta_alpha": 0.5, "rp3beta_beta": 0.25, "rp3beta_neighbours": 200}],
        "ease_grid": None,
        "ease": False,  # EASE's dense inverse is the slowest fit: a first look goes without it
        "scoring_grid": [{"history_decay": 0.0, "exclude_history": True}],
        "weights": [0.0, 1.0],
    },
    "standard": {
        "backbone": {"max_steps": 60000, "eval_every": 500, "patience": 10},
        "rule_grid": {"neighbours": [4, 8, 16], "alpha": [0.25, 0.5, 0.8, 1.2, 1.6, 2.4]},
        "itemknn_grid": None,  # the defaults of dmirec.recipes.fit
        "rp3beta_grid": None,
        "ease_grid": None,
        "scoring_grid": None,
        "weights": None,
    },
    "full": {
        "backbone": {"max_steps": 200000, "eval_every": 500, "patience": 10},
        "rule_grid": {"neighbours": [2, 4, 8, 16], "alpha": [0.25, 0.5, 0.8, 1.2, 1.6, 2.4, 3.2]},
        "itemknn_grid": [{"itemknn_shrink": s, "itemknn_neighbours": k}
                         for k in (50, 200, 500) for s in (10.0, 50.0, 100.0, 200.0)],
        "rp3beta_grid": [{"rp3beta_alpha": a, "rp3beta_beta": b, "rp3beta_neighbours": k}
                         for k in (100, 200, 500) for a in (0.5, 0.75, 1.0) for b in (0.0, 0.25, 0.5)],
        "ease_grid": [{"ease_lambda": lam} for lam in (50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0)],
        "scoring_grid": [{"history_decay": d, "exclude_history": e} for e in (False, True) for d in (0.0, 0.05, 0.1, 0.3)],
        "weights": [0.0, 0.25, 0.5, 1.0, 2.0, 4.0],
    },
}
RULE_TIE = 0.0005  # valid Recall@50 within this of the best counts as tied: the smaller alpha, then n wins


def derive_settings(data: PreparedData, ease_max_items: int = 50_000) -> dict[str, Any]:
    """The dataset settings of the product path (see the module docstring)."""
    train = data.splits["train"]
    lengths = np.diff(np.asarray(train.offsets))  # (U,)
    median = float(np.median(lengths)) if lengths.size else 0.0
    seq_len = next((s for s in SEQ_LENS if s >= median), SEQ_LENS[-1])
    valid = eval_split(data.splits["valid"], seq_len)
    repeats = total = 0
    for hist, targets in zip(valid.full_history, valid.targets):
        seen = set(np.asarray(hist).tolist())
        repeats += sum(1 for t in np.asarray(targets).tolist() if t in seen)
        total += len(targets)
    share = repeats / total if total else 0.0
    return {"seq_len": int(seq_len), "median_history": median, "repeat_share": round(share, 4),
            "repeat_channel": bool(share > REPEAT_SHARE), "num_items": data.num_items,
            "train_users": int(train.num_users), "ease": bool(data.num_items <= ease_max_items)}
