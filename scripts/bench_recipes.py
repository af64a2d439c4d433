#!/usr/bin/env python
"""Recipes of channels on the benchmark splits: fitted on validation users, measured on test users.

    python scripts/bench_recipes.py run DATASET SEED [--runs bench_runs] [--channels model,itemknn,rp3beta,ease]
                                    [--view published|new_items] [--extra RUN_TAG ...]
    python scripts/bench_recipes.py table          # the markdown section BENCHMARKS.md includes

For one dataset and seed: the REMI run ``RUNS/DATASET-remi-sSEED`` (trained by ``scripts/bench.py``;
``bench.py reproduce DATASET-remi-sSEED`` retrains it from its record), with the neighbour rule
chosen for that run on its validation users (:func:`dmirec.pipeline.rule.select_rule` over the grid
and tie rule of ``configs/bench/neighbour_grid.yaml``), is the channel ``model``; ``dmirec fit-channels`` (:func:`dmirec.recipes.fit.fit_recipe`, whose docstring states the
selection rule) adds ItemKNN and EASE fitted on the training users and, with ``repeat`` in
``--channels``, the repeat ranking; ``--extra RUN_TAG`` adds another finished run on the same data as
a channel (e.g. ``beauty-dmi-collab-target-s2021``). Everything is chosen on validation users; the
test users are scored once, for the recipe and for every channel alone.

Records: ``bench_results/recipes/DATASET-sSEED[-VIEW][-TAG].json`` with the chosen recipe, the whole
grid, the channels' settings, the test metrics, commit, data fingerprint, machine and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench import data_fingerprint, git_commit, machine  # noqa: E402

OUT = ROOT / "bench_results" / "recipes"
RULE_GRID = ROOT / "configs" / "bench" / "neighbour_grid.yaml"
METRICS = ("recall@20", "recall@50", "ndcg@50", "hitrate@50")


def run(dataset: str, seed: int, runs: Path, channels: list[str], view: str, extra: list[str], tag: str) -> dict:
    import torch

    from dmirec.evaluation.evaluate import evaluate_run
    from dmirec.recipes.fit import evaluate_recipe, fit_recipe
    from dmirec.runs.rundir import read_config, read_data_ref

    torch.set_num_threads(1)
    start = time.perf_counter()
    run_dir = runs / f"{dataset}-remi-s{seed}"
    if not (run_dir / "result.json").exists():
        sys.exit(f"{run_dir}: no finished REMI run (python scripts/bench.py reproduce {dataset}-remi-s{seed})")
    import yaml

    from dmirec.pipeline.rule import select_rule

    grid = yaml.safe_load(RULE_GRID.read_text())
    chosen_rule = select_rule(run_dir, {"neighbours": grid["neighbours"], "alpha": grid["alpha"]}, grid["tie"])
    overrides = {"neighbour_alpha": chosen_rule["neighbour_alpha"], "neighbours": chosen_rule["neighbours"]}
    print(f"[{dataset} s{seed}] neighbour rule chosen on validation users: {overrides}", flush=True)
    new_items = view == "new_items"
    names = channels + [str(runs / t) for t in extra]
    suffix = ("" if view == "published" else f"-{view}") + (f"-{tag}" if tag else "")
    folder = run_dir / f"recipe{suffix}"
    prefit = _load_prefit(runs, dataset, view)
    record = fit_recipe(run_dir, names, overrides=overrides, new_items_only=new_items, out=folder, prefit=prefit,
                        log=lambda s: print(f"[{dataset} s{seed}{suffix}] {s}", flush=True))
    recipe = record.pop("recipe")
    _save_prefit(runs, dataset, view, record.pop("built"), Path(read_data_ref(run_dir)["path"]))
    data_path = Path(read_data_ref(run_dir)["path"])
    from dmirec.data.dataset import load_dataset

    data = load_dataset(data_path, mmap=True)
    cfg = read_config(run_dir)
    test = evaluate_recipe(recipe, data, "test", cfg.seq_len, (20, 50), new_items_only=new_items, channels_alone=True)
    plain = evaluate_run(run_dir, split="test", new_items_only=new_items)  # REMI without the rule
    out = {
        "dataset": dataset, "seed": seed, "view": view, "run": run_dir.name, "rule": overrides,
        "rule_grid": chosen_rule["grid"], "rule_source": str(RULE_GRID.relative_to(ROOT)), "channels": record["channels"],
        "chosen": record["chosen"], "channels_alone_valid": record["channels_alone"],
        "channel_grids": record["channel_grids"], "notes": record["notes"], "merger_grid": record["merger_grid"],
        "rule_text": record["rule"], "valid_users": record["users"],
        "test": {"recipe": {k: float(test[k]) for k in test if "@" in k},
                 "channels": {n: {k: float(v) for k, v in m.items() if "@" in k} for n, m in test["channels"].items()},
                 "remi_without_rule": {k: float(plain[k]) for k in plain if "@" in k}},
        "channel_configs": {c.name: c.config.to_dict() for c in recipe.channels},
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "commit": git_commit(), "data_fingerprint": data_fingerprint(data_path), "machine": machine(),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{dataset}-s{seed}{suffix}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    t = out["test"]
    print(f"[{dataset} s{seed}{suffix}] test recall@50: recipe {t['recipe']['recall@50']:.4f}; "
          + ", ".join(f"{n} {m['recall@50']:.4f}" for n, m in t["channels"].items())
          + f"; REMI without rule {t['remi_without_rule']['recall@50']:.4f} -> {path}", flush=True)
    return out


def _cache(runs: Path, dataset: str, view: str) -> Path:
    return runs / ".recipe-channels" / f"{dataset}-{view}"


def _load_prefit(runs: Path, dataset: str, view: str) -> dict:
    """The item-to-item channels an earlier seed chose on this dataset's validation users (they do
    not depend on the REMI run), so that each dataset fits ItemKNN and EASE once."""
    import torch

    from dmirec.config import from_dict
    from dmirec.data.dataset import load_dataset
    from dmirec.models import build_model
    from dmirec.recipes.recipe import make_channel

    folder = _cache(runs, dataset, view)
    out = {}
    for meta_path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        meta = json.loads(meta_path.read_text())
        cfg = from_dict(meta["config"])
        data = load_dataset(meta["data"], mmap=True)
        if data_fingerprint(Path(meta["data"])) != meta["fingerprint"]:
            continue
        model = build_model(cfg, data.num_items, data.item_popularity("train"))
        model.load_state_dict(torch.load(meta_path.with_suffix(".pt"), weights_only=True))
        out[meta["name"]] = (make_channel(meta["name"], model, cfg), meta["grid"])
        print(f"[{dataset}] channel {meta['name']}: reused from {meta_path} (chosen on the same validation users)")
    return out


def _save_prefit(runs: Path, dataset: str, view: str, built: dict, data: Path) -> None:
    """Keep the item-to-item channels this run chose (``data``: its prepared folder) for the other seeds."""
    import torch

    folder = _cache(runs, dataset, view)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (ch, grid) in built.items():
        if name not in ("itemknn", "rp3beta", "ease") or (folder / f"{name}.json").exists():
            continue
        torch.save(ch.model.state_dict(), folder / f"{name}.pt")
        (folder / f"{name}.json").write_text(json.dumps({"name": name, "config": ch.config.to_dict(), "grid": grid,
                                                         "data": str(data), "fingerprint": data_fingerprint(data)}))


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


LABELS = {"model": "REMI + neighbour rule", "itemknn": "ItemKNN", "rp3beta": "RP3beta", "ease": "EASE",
          "repeat": "repeat ranking", "remi-other-seed": "REMI of another seed (no rule)"}


CLASSICAL = ROOT / "bench_results" / "classical"  # scripts/bench_classical.py: each method alone, its own grid


def classical_alone(dataset: str, view: str) -> list[tuple[str, list[dict]]]:
    """(label, [test metrics]) of each classical method measured alone by scripts/bench_classical.py
    on this dataset and view (its own validation grid, EASE dense): single methods the recipe must
    beat too, beside its channels alone."""
    rows = []
    for path in sorted(CLASSICAL.glob(f"{dataset}-*.json")):
        rec = json.loads(path.read_text())
        test = ((rec.get("views") or {}).get(view) or {}).get("test")
        if rec.get("dataset") == dataset and test:
            rows.append((f"{LABELS.get(rec['method'], rec['method'])} alone, own grid (bench_classical)", [test]))
    return rows


def _channel_kind(name: str, dataset: str) -> str:
    """A channel's name for grouping seeds: another seed's REMI run (``--extra DATASET-remi-sSEED``)
    is one kind of channel whatever its seed."""
    return "remi-other-seed" if re.fullmatch(rf"{re.escape(dataset)}-remi-s\d+", name) else name


def table() -> list[str]:
    """Markdown: per dataset and view, the recipe and each channel alone (test, mean ± sd over seeds)."""
    records = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    lines = ["## Recipes of channels (ItemKNN, RP3beta, EASE, REMI + rule, repeats), merged on validation users", "",
             "`python scripts/bench_recipes.py run DATASET SEED` (records in bench_results/recipes/). Each seed's",
             "REMI run with its own neighbour rule is the channel `model`; ItemKNN and EASE are deterministic (their",
             "settings chosen on validation users); the merger and its weights are chosen on validation users. Test",
             "users, mean ± sd over seeds.", ""]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        key = (r["dataset"], r["view"], ",".join(_channel_kind(c, r["dataset"]) for c in r["channels"]))
        groups.setdefault(key, []).append(r)
    for (dataset, view, chans), recs in sorted(groups.items()):
        recs.sort(key=lambda r: r["seed"])
        lines += [f"### {dataset}, {view.replace('_', '-')} view, channels {chans}", "",
                  "| method | seeds | Recall@20 | Recall@50 | NDCG@50 | HitRate@50 |", "|---|---|---|---|---|---|"]
        seeds = ",".join(str(r["seed"]) for r in recs)
        rows = [("merged recipe", [r["test"]["recipe"] for r in recs])]
        for i, name in enumerate(recs[0]["channels"]):  # same order in every record of the group
            kind = _channel_kind(name, dataset)
            rows.append((f"{LABELS.get(kind, kind)} alone", [r["test"]["channels"][r["channels"][i]] for r in recs]))
        rows.append(("REMI (no rule)", [r["test"]["remi_without_rule"] for r in recs]))
        for label, ms in rows:
            lines.append(f"| {label} | {seeds} | " + " | ".join(_fmt([m[k] for m in ms]) for k in
                                                               ("recall@20", "recall@50", "ndcg@50", "hitrate@50")) + " |")
        chosen = "; ".join(f"s{r['seed']}: {r['chosen']['merger']}"
                           + (f" k={r['chosen']['k']:g}" if r['chosen']['merger'] == 'rrf' else "")
                           + " w=" + "/".join(f"{w:g}" for w in r["chosen"]["weights"]) for r in recs)
        best_single = max(rows[1:] + classical_alone(dataset, view),
                          key=lambda row: statistics.mean(m["recall@50"] for m in row[1]))
        merged = [m["recall@50"] for m in rows[0][1]]
        single = [m["recall@50"] for m in best_single[1]]
        ratio = statistics.mean(merged) / statistics.mean(single)
        sd = max(statistics.stdev(merged) if len(merged) > 1 else 0.0, statistics.stdev(single) if len(single) > 1 else 0.0)
        gap = statistics.mean(merged) - statistics.mean(single)
        lines += ["", f"Chosen (weights in channel order {chans}): {chosen}.", "",
                  f"Target (merged >= 1.10 x the best single method, gap > 2 x the larger sd): best single is "
                  f"{best_single[0]} ({statistics.mean(single):.4f}); merged / best = {ratio:.3f}, gap "
                  f"{gap:+.4f} vs 2 sd {2 * sd:.4f}: "
                  f"{'met' if ratio >= 1.10 and gap > 2 * sd else 'NOT met'}.", ""]
    return lines


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("dataset")
    r.add_argument("seed", type=int)
    r.add_argument("--runs", default=str(ROOT / "bench_runs"))
    r.add_argument("--channels", default="model,itemknn,rp3beta,ease")
    r.add_argument("--view", choices=["published", "new_items"], default="published")
    r.add_argument("--extra", nargs="*", default=[], help="other run tags in --runs used as channels")
    r.add_argument("--tag", default="", help="suffix of the record name (for --extra variants)")
    sub.add_parser("table")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.cmd == "run":
        run(a.dataset, a.seed, Path(a.runs), [c for c in a.channels.split(",") if c], a.view, a.extra, a.tag)
    else:
        print("\n".join(table()))
