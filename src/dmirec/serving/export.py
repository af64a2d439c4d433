"""``dmirec export RUN_DIR BUNDLE_DIR``: turn a training run into a self-contained serving bundle.

The bundle (format in :mod:`dmirec.serving.bundle`) holds the run's best (or last) model weights
and resolved config, the prepared dataset's raw item ids, the item embeddings, the training
popularity of every item, the interest vectors of a sample of validation users (so that an
approximate index can later be measured against exact search) and a manifest with the dmirec,
torch and format versions and the sha256 of every file. Nothing in it refers back to the run
directory or the dataset: a server needs only the bundle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..collab.neighbours import fill_bank
from ..data.dataset import load_dataset
from ..data.sampler import eval_split
from ..evaluation.evaluate import evaluate_model, metric_cutoffs, user_vectors
from ..recipes.fit import evaluate_recipe, load_run_recipe, run_recipe_folder
from ..recipes.recipe import recipe_files
from ..repeats.channel import channel_from_config
from ..repeats.params import with_repeat_params
from ..runs.rundir import load_trained_model, read_data_ref
from .bundle import BundleError, write_bundle

DEFAULT_QUERY_SAMPLE = 1000


def _query_sample(model, data, seq_len: int, users: int, batch_size: int = 1024) -> np.ndarray:
    """Interest vectors (S, K, D) of the first ``users`` validation users (test users if none)."""
    split = "valid" if data.splits["valid"].num_users else "test"
    ev = eval_split(data.splits[split], seq_len, max_users=users)
    if len(ev.history) == 0:
        with torch.no_grad():
            k = model.user_vectors(torch.ones(1, seq_len, dtype=torch.long),
                                   torch.ones(1, seq_len, dtype=torch.bool)).shape[1]
        return np.zeros((0, k, model.embedding_dim), dtype=np.float32)
    return user_vectors(model, ev, batch_size)  # (S, K, D)


def export_bundle(run_dir: str | Path, bundle_dir: str | Path, *, which: str = "best",
                  query_sample: int = DEFAULT_QUERY_SAMPLE, overwrite: bool = False,
                  overrides: dict[str, Any] | None = None,
                  repeat_params: str | Path | None = None, recipe: str | None = "auto",
                  served_metrics: bool = True) -> dict[str, Any]:
    """Export ``run_dir`` (its ``which`` checkpoint: best or last) to ``bundle_dir``; returns the manifest.

    Needs the prepared dataset the run used (``data.json``) for the raw item ids, popularity and
    validation users. ``query_sample`` validation users' interest vectors are stored for
    recall measurement. ``overrides``: evaluation-time config changes (e.g. the neighbour rule);
    an interest bank the model reads travels in the bundle's weights, checksummed with them.
    The repeat channel's parameters (``RUN_DIR/repeat.json`` or the file ``repeat_params``, see
    ``dmirec fit-repeat``) go into the bundle's config. ``recipe``: the fitted recipe of channels
    (``auto``: ``RUN_DIR/recipe`` when it exists; ``none``: the model alone; or a folder) travels
    in the bundle, its channels' weights checksummed with the rest.
    ``served_metrics``: the manifest's ``served`` entry holds the test metrics of exactly what the
    bundle serves (the recipe, or the model with its rule and repeat channel), measured at export.
    """
    run_dir = Path(run_dir)
    folder = run_recipe_folder(run_dir, recipe)
    if folder is not None:  # the fitted recipe: the run's own channel with the settings it was fitted with
        if which != "best" or repeat_params is not None:
            raise BundleError(f"{folder}: a recipe is exported with the best checkpoint and its own settings; "
                              f"pass --recipe none to export the model alone with other settings")
        fitted, model, cfg, _ = load_run_recipe(run_dir, folder, overrides)
    else:
        fitted = None
        model, cfg = load_trained_model(run_dir, which=which, device="cpu", overrides=overrides)
    cfg = with_repeat_params(cfg, run_dir, repeat_params)
    ref = read_data_ref(run_dir)
    data_path = Path(ref["path"])
    if not (data_path / "meta.json").exists():
        raise BundleError(f"{run_dir / 'data.json'}: the run's prepared dataset {data_path} is not there; "
                          f"it is needed for the raw item ids and popularity")
    data = load_dataset(data_path)
    if data.num_items != int(ref["num_items"]):
        raise BundleError(f"{data_path}: has {data.num_items} items but the run was trained on {ref['num_items']}")
    if getattr(model, "bank", None) is not None and model.bank.size == 0:
        fill_bank(model, cfg, data.splits["train"])
    model.eval()
    items = model.item_embeddings().detach().float().cpu().numpy()  # (N + 1, D)
    popularity = data.item_popularity("train")  # (N + 1,)
    queries = _query_sample(model, data, cfg.seq_len, query_sample)  # (S, K, D)
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    info = {
        "dataset": {"name": data.name, "num_items": data.num_items, "prepared_path": str(data_path)},
        "source": {
            "run_dir": str(run_dir.resolve()),
            "checkpoint": which,
            "finished": result_path.exists(),
            "valid_recall@50": result.get("valid_recall@50"),
            "best_step": result.get("best_step"),
            "test": result.get("test"),
        },
        "repeat": {k: getattr(cfg, k) for k in ("repeat_channel", "repeat_weight", "repeat_recency",
                                                 "repeat_bias", "repeat_decay", "repeat_ref_rank")},
    }
    extra: dict[str, bytes] = {}
    if fitted is not None:
        extra = recipe_files(fitted)
        info["recipe"] = fitted.describe()
    if served_metrics and data.splits["test"].num_users:
        if fitted is not None:
            served = evaluate_recipe(fitted, data, "test", cfg.seq_len, metric_cutoffs(cfg),
                                     new_items_only=bool(fitted.info.get("new_items_only", False)))
        else:
            served = evaluate_model(model, data, "test", cfg.seq_len, metric_cutoffs(cfg), "auto", cfg.exclude_history,
                                    cfg.eval_batch_size, repeat=channel_from_config(cfg),
                                    new_items_only=cfg.new_items_only)
        info["served"] = {"split": "test", "what": "recipe" if fitted is not None else "model",
                          "metrics": {k: float(v) for k, v in served.items() if "@" in k}}
    return write_bundle(bundle_dir, model_state=model.state_dict(), config=cfg, item_ids=data.item_ids,
                        item_embeddings=items, popularity=popularity, query_sample=queries, info=info,
                        overwrite=overwrite, extra_files=extra)
