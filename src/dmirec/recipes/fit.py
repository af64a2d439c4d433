"""``dmirec fit-channels RUN_DIR``: choose a recipe of channels and its merger on validation users.

The rule, fixed before any test number is seen:

1. Every requested channel is built: ``model`` (the run itself, with the neighbour rule and
   repeat channel of its config and the given overrides; history exclusion on or off, whichever
   scores better alone), ``itemknn``, ``rp3beta`` and ``ease`` (fitted on the run's training users; each
   setting of their small grid, times the scoring variants of :data:`SCORING_GRID` (history
   decay, history exclusion), scored alone on the validation users, the best validation
   Recall@50 kept, ties to the earlier grid point), ``repeat`` (the user's own history by count,
   then popular), or the path of another run on the same prepared data. ``ease`` is skipped,
   with a note, above ``ease_max_items`` items.
2. Each channel ranks every validation user once (its top ``depth``).
3. Every point of the merger grid is scored on those users: merger ``rrf`` with k in
   :data:`RRF_KS` and ``score``, times one weight per channel from :data:`WEIGHTS` (weight vectors
   that are multiples of each other are the same merge, so each direction is scored once). The
   grid holds every single channel alone (one-hot weights), so the chosen recipe's validation
   Recall@50 is never below the best channel's.
4. The best validation Recall@50 wins; ties: better Recall@20, then fewer channels, then the
   earlier grid point.

Test users are never seen. The recipe, the whole grid and every channel's validation metrics go
to ``RUN_DIR/recipe/`` (:mod:`dmirec.recipes.recipe`).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, from_dict, upgrade_saved
from ..data.sampler import EvalSet, eval_split
from ..evaluation.evaluate import load_run, new_items_view
from ..evaluation.metrics import catalogue_coverage, summarize
from ..models import build_model
from ..retrieval import SearchResult
from ..retrieval.fill import fill_popular
from ..runs.rundir import read_config, read_data_ref
from .merge import candidate_table, contributions, merge_table
from .recipe import (OWN_MODEL, RECIPE_DIR, RECIPE_FILE, Channel, Recipe, RecipeError, channel_list, load_recipe,
                     make_channel, read_spec, write_recipe)

RRF_KS = (10.0, 60.0)
WEIGHTS = (0.0, 0.5, 1.0, 2.0)
DEPTH = 200
ITEMKNN_GRID: tuple[dict[str, Any], ...] = tuple(
    {"itemknn_shrink": s, "itemknn_neighbours": k} for k in (50, 200) for s in (10.0, 50.0, 200.0))
EASE_GRID: tuple[dict[str, Any], ...] = tuple({"ease_lambda": lam} for lam in (100.0, 500.0, 2000.0))
RP3BETA_GRID: tuple[dict[str, Any], ...] = tuple(
    {"rp3beta_alpha": a, "rp3beta_beta": b, "rp3beta_neighbours": 200} for a in (0.5, 1.0) for b in (0.0, 0.25, 0.5))
# how an item-to-item channel scores a history: each fitted matrix is tried with every variant
SCORING_GRID: tuple[dict[str, Any], ...] = tuple(
    {"history_decay": d, "exclude_history": e} for e in (False, True) for d in (0.0, 0.1))
KNOWN = ("model", "itemknn", "rp3beta", "ease", "repeat")


def _score(res, targets, n: int = 50) -> dict[str, float]:
    m = summarize(res.ids, targets, (20, n))
    return {"recall@20": float(m["recall@20"]), f"recall@{n}": float(m[f"recall@{n}"])}


def _fill(res, popular_order: np.ndarray, histories, exclude: bool):
    return fill_popular(res, popular_order, histories if exclude else None)


def _select(name: str, base: Config, grid: Sequence[dict[str, Any]], scoring: Sequence[dict[str, Any]], data,
            valid: EvalSet, exclude: bool, popular_order: np.ndarray,
            log: Callable[[str], None]) -> tuple[Channel, list[dict[str, Any]]]:
    """Fit every grid point of an item-to-item channel, score it alone on validation users with
    every scoring variant (history decay, history exclusion), and keep the best."""
    popularity = data.item_popularity("train")
    rows, best = [], None
    for point in grid:
        cfg = base.replace(model=name, num_interests=1, max_steps=0, neighbour_alpha=0.0, repeat_channel=False,
                           **point)
        tick = time.perf_counter()
        model = build_model(cfg, data.num_items, popularity).fit(data.splits["train"])
        fit_s = time.perf_counter() - tick
        for variant in scoring:
            vcfg = cfg.replace(**variant)
            model.history_decay = vcfg.history_decay
            ch = make_channel(name, model, vcfg)
            res = _fill(channel_list(ch, valid.full_history, 50, exclude), popular_order, valid.full_history,
                        exclude or vcfg.exclude_history)
            row = {**point, **variant, **_score(res, valid.targets), "fit_seconds": round(fit_s, 2)}
            rows.append(row)
            log(f"{name} {point} {variant}: valid recall@50 {row['recall@50']:.4f} (fit {fit_s:.1f} s)")
            if best is None or row["recall@50"] > best[0]["recall@50"]:
                best = (row, model, vcfg)
    row, model, vcfg = best
    model.history_decay = vcfg.history_decay
    return make_channel(name, model, vcfg), rows


def weight_grid(channels: int, weights: Sequence[float] = WEIGHTS) -> list[tuple[float, ...]]:
    """Every weight vector over ``weights`` (not all zero), one per direction, scaled so that its
    largest weight is 1, in grid order."""
    seen, out = set(), []
    for w in itertools.product(weights, repeat=channels):
        if not any(x > 0 for x in w):
            continue
        key = tuple(round(float(x) / max(w), 6) for x in w)
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def fit_recipe(run_dir: str | Path, channels: Sequence[str] = ("model", "itemknn", "ease"), *,
               overrides: dict[str, Any] | None = None, depth: int = DEPTH, max_users: int = 0,
               new_items_only: bool = False, weights: Sequence[float] = WEIGHTS, rrf_ks: Sequence[float] = RRF_KS,
               itemknn_grid: Sequence[dict[str, Any]] = ITEMKNN_GRID, ease_grid: Sequence[dict[str, Any]] = EASE_GRID,
               rp3beta_grid: Sequence[dict[str, Any]] = RP3BETA_GRID,
               scoring_grid: Sequence[dict[str, Any]] = SCORING_GRID, model_exclusion: bool = True,
               fixed_merger: dict[str, Any] | None = None,
               prefit: dict[str, tuple[Channel, list[dict[str, Any]]]] | None = None,
               channel_scoring: dict[str, Sequence[dict[str, Any]]] | None = None,
               write: bool = True, out: str | Path | None = None,
               log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Choose the recipe of ``run_dir`` on its validation users; write it to ``out`` (default
    ``RUN_DIR/recipe/``) unless ``write`` is False. Returns the record (chosen point, grid,
    channels alone, the :class:`Recipe` itself under ``"recipe"``). ``fixed_merger``
    (``{"merger", "k", "weights"}``) replaces the merger grid by that one point (a recipe replayed
    from ``recipe.yaml``); ``model_exclusion`` False keeps the run's own ``exclude_history``.
    ``prefit``: item-to-item channels already chosen on the same data (name -> (channel, grid
    rows)), reused instead of fitted again: their choice depends on the training and validation
    users only, not on the run, so the seeds of one dataset share it. ``channel_scoring``: a
    channel's own scoring variants instead of ``scoring_grid`` (a replay fixes each channel's)."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    model, cfg, data = load_run(run_dir, overrides=overrides)
    valid = eval_split(data.splits["valid"], cfg.seq_len, max_users)
    if not valid.targets:
        raise ValueError(f"{run_dir}: the dataset has no validation users to fit a recipe on")
    skipped = 0
    if new_items_only:
        valid, skipped = new_items_view(valid)
    exclude = bool(new_items_only or cfg.exclude_history)
    pop = data.item_popularity("train").astype(np.float64)
    order = np.lexsort((np.arange(pop.size), -pop))
    popular_order = order[order > 0].astype(np.int64)

    built: list[Channel] = []
    grids: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    for name in channels:
        if name == OWN_MODEL:
            own = make_channel(OWN_MODEL, model, cfg)
            if model_exclusion and not exclude:  # the run's channel with and without history exclusion
                rows = []
                for e in (False, True):
                    ch = make_channel(OWN_MODEL, model, cfg.replace(exclude_history=e))
                    res = _fill(channel_list(ch, valid.full_history, 50), popular_order, valid.full_history, e)
                    rows.append({"exclude_history": e, **_score(res, valid.targets)})
                    log(f"model exclude_history={e}: valid recall@50 {rows[-1]['recall@50']:.4f}")
                grids["model"] = rows
                pick = max(rows, key=lambda r: (r["recall@50"], not r["exclude_history"]))
                own = make_channel(OWN_MODEL, model, cfg.replace(exclude_history=pick["exclude_history"]))
            built.append(own)
        elif prefit and name in prefit:
            ch, grids[name] = prefit[name]
            built.append(ch)
        elif name in ("itemknn", "rp3beta", "ease"):
            if name == "ease" and data.num_items > cfg.ease_max_items:
                notes.append(f"ease skipped: {data.num_items:,} items > ease_max_items {cfg.ease_max_items:,}")
                log(notes[-1])
                continue
            grid = {"itemknn": itemknn_grid, "rp3beta": rp3beta_grid, "ease": ease_grid}[name]
            scoring = (channel_scoring or {}).get(name, scoring_grid)
            ch, grids[name] = _select(name, cfg, grid, scoring, data, valid, exclude, popular_order, log)
            built.append(ch)
        elif name == "repeat":
            rcfg = cfg.replace(model="repeat", num_interests=1, max_steps=0, neighbour_alpha=0.0, repeat_channel=False,
                               exclude_history=False)
            built.append(make_channel("repeat", build_model(rcfg, data.num_items, pop), rcfg))
        else:
            other = Path(name)
            if not (other / "config.yaml").exists():
                raise ValueError(f"channel {name!r}: not one of {KNOWN} nor a run directory")
            if Path(read_data_ref(other)["path"]).resolve() != Path(read_data_ref(run_dir)["path"]).resolve():
                raise ValueError(f"channel {name!r}: trained on other prepared data than {run_dir}")
            omodel, ocfg, _ = load_run(other)
            label = re.sub(r"[^A-Za-z0-9_.-]", "_", other.resolve().name)[:64]
            built.append(make_channel(label, omodel, ocfg))
    names = [c.name for c in built]
    if len(set(names)) != len(names):
        raise ValueError(f"channel names must be distinct, got {names}")

    log(f"ranking {len(valid.targets):,} validation users with {len(built)} channels (top {depth})")
    lists = [channel_list(c, valid.full_history, depth, exclude) for c in built]
    alone = {}
    for c, res in zip(built, lists):
        alone[c.name] = _score(_fill(_cut(res, 50), popular_order, valid.full_history,
                                     exclude or c.config.exclude_history), valid.targets)
    table = candidate_table(lists)
    variants = [("rrf", float(k)) for k in rrf_ks] + [("score", 0.0)]
    if fixed_merger is not None:
        variants = [(fixed_merger["merger"], float(fixed_merger["k"]) if fixed_merger["merger"] == "rrf" else 0.0)]
        if len(fixed_merger["weights"]) != len(built):
            raise ValueError(f"the fixed merger has {len(fixed_merger['weights'])} weights for {len(built)} channels")
    rows: list[dict[str, Any]] = []
    best = None
    for merger, k in variants:
        contrib = contributions(table, merger, k or 60.0)
        points = [tuple(float(x) for x in fixed_merger["weights"])] if fixed_merger else weight_grid(len(built), weights)
        for w in points:
            res = _fill(merge_table(table, w, 50, merger, k or 60.0, contrib), popular_order, valid.full_history,
                        exclude)
            row = {"merger": merger, "k": k, "weights": list(w), **_score(res, valid.targets)}
            rows.append(row)
            key = (row["recall@50"], row["recall@20"], -sum(x > 0 for x in w))
            if best is None or key > best[0]:
                best = (key, row)
    chosen = best[1]
    log(f"chosen: {chosen['merger']} k={chosen['k']} weights {dict(zip(names, chosen['weights']))}: "
        f"valid recall@50 {chosen['recall@50']:.4f} (best channel alone "
        f"{max(v['recall@50'] for v in alone.values()):.4f})")
    info = {"split": "valid", "users": len(valid.targets), "skipped_users": skipped, "new_items_only": new_items_only,
            "chosen": chosen, "channels_alone": alone, "channel_grids": grids, "notes": notes,
            "merger_grid": rows, "rule": __doc__.split("The rule, fixed before any test number is seen:")[1].split(
                "Test users are never seen.")[0].strip()}
    recipe = Recipe(built, chosen["weights"], chosen["merger"], chosen["k"] or 60.0, depth, exclude,
                    popular_order, info)
    record = {"run_dir": str(run_dir.resolve()), "dataset": data.name, "channels": names, **info,
              "built": {c.name: (c, grids.get(c.name, [])) for c in built},
              "seconds": round(time.perf_counter() - start, 2)}
    if write:
        out = Path(out) if out is not None else run_dir / RECIPE_DIR
        write_recipe(out, recipe)
        record["output"] = str(out)
    record["recipe"] = recipe
    return record


def _cut(res, n: int):
    return SearchResult(ids=res.ids[:, :n], scores=res.scores[:, :n], interest=res.interest[:, :n])


def evaluate_recipe(recipe: Recipe, data, split: str, seq_len: int, ns=(20, 50), *, max_users: int = 0,
                    new_items_only: bool = False, channels_alone: bool = False) -> dict[str, Any]:
    """Metrics of ``recipe`` on one split's users (the lists :meth:`Recipe.rank` serves); with
    ``channels_alone`` also every channel of the recipe alone (``"channels"``)."""
    start = time.perf_counter()
    ev = eval_split(data.splits[split], seq_len, max_users)
    skipped = 0
    if new_items_only:
        ev, skipped = new_items_view(ev)
    exclude = bool(new_items_only or recipe.exclude_history)
    n = max(ns)
    res = recipe.rank(ev.full_history, n, exclude)
    metrics: dict[str, Any] = summarize(res.ids, ev.targets, ns)
    for k in ns:
        metrics[f"coverage@{int(k)}"] = catalogue_coverage(res.ids, data.num_items, k)
    if new_items_only:
        metrics["skipped_users"] = skipped
    if channels_alone:
        metrics["channels"] = {}
        for ch in recipe.channels:
            alone = _fill(channel_list(ch, ev.full_history, n, exclude), recipe.popular_order, ev.full_history,
                          exclude or ch.config.exclude_history)
            metrics["channels"][ch.name] = summarize(alone.ids, ev.targets, ns)
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def run_recipe_folder(run_dir: str | Path, recipe: str | None = "auto") -> Path | None:
    """The recipe folder ``recipe`` names for a run: ``auto`` is ``RUN_DIR/recipe`` when it holds a
    recipe (else None), ``none`` is None, anything else a folder that must hold one."""
    if recipe in (None, "none"):
        return None
    if recipe == "auto":
        folder = Path(run_dir) / RECIPE_DIR
        return folder if (folder / RECIPE_FILE).exists() else None
    folder = Path(recipe)
    if not (folder / RECIPE_FILE).exists():
        raise RecipeError(f"{folder / RECIPE_FILE}: no recipe there (write one with `dmirec fit-channels RUN_DIR`)")
    return folder


def load_run_recipe(run_dir: str | Path, folder: str | Path, overrides: dict[str, Any] | None = None):
    """(recipe, model, cfg, data) of a run and its recipe folder. The run's own channel is loaded
    with the settings the recipe recorded for it (e.g. the neighbour rule chosen with it);
    ``overrides`` are refused, since the recipe fixes its channels' settings."""
    if overrides:
        raise ValueError(f"{folder}: the recipe fixes its channels' settings; evaluate the run alone with "
                         f"--recipe none to change {sorted(overrides)}")
    spec = read_spec(folder)
    own = next((c for c in spec["channels"] if c["name"] == OWN_MODEL), None)
    changes = None
    if own is not None:
        run_cfg = read_config(Path(run_dir))
        saved = from_dict(upgrade_saved(dict(own["config"])), source=f"{folder} channel model").to_dict()
        changes = {k: v for k, v in saved.items() if run_cfg.to_dict().get(k) != v} or None
    model, cfg, data = load_run(run_dir, overrides=changes)
    popularity = data.item_popularity("train")
    recipe = load_recipe(folder, model, cfg, data.num_items, popularity, cfg.retrieval_backend)
    return recipe, model, cfg, data
