"""``dmirec fit LOG_OR_PREPARED_DIR --out DIR``: from an interaction log to a served recipe.

Stages, each written down in ``DIR/fit_state.json`` as it finishes, so that a killed ``fit``
resumes where it stopped (a killed training run resumes from its last checkpoint):

1. ``prepare``: the log through the ComiRec/REMI protocol into ``DIR/data`` (a prepared folder is
   used as it is);
2. ``settings``: what the data implies (:func:`dmirec.pipeline.settings.derive_settings`);
3. ``train``: the backbone, REMI, trained to early stopping within the budget's step cap
   (``DIR/backbone``, an ordinary run directory);
4. ``rule``: the neighbour rule's (n, alpha) on validation users (:mod:`dmirec.pipeline.rule`);
5. ``channels``: ItemKNN, RP3beta, EASE (where the catalogue and the budget allow it), the repeat ranking (where the data
   has repeats) and the backbone with its rule, and the merger, all chosen on validation users
   (:func:`dmirec.recipes.fit.fit_recipe`; the recipe lands in ``DIR/backbone/recipe``);
6. ``evaluate``: the recipe, each channel alone, REMI without the rule and most-popular on test
   users (``DIR/report.md``, ``DIR/report.json``);
7. ``export``: the bundle that serves the recipe (``DIR/bundle``).

Every choice goes into ``DIR/recipe.yaml``; ``dmirec fit LOG --recipe recipe.yaml --out DIR2``
replays it without any search (same data settings, same backbone config and seed, the same rule,
channel settings and merger weights), so it gives the same numbers. Selection uses validation users
only.

``--new-items-only`` fits the channels and the merger for the new-items view (the history's items
are never recommended and targets the user already had do not count), measures the test table in
that view and serves it; the neighbour rule is chosen in the published view either way.

Config keys given on the command line (``dmirec fit LOG --out DIR --bank_search=hnsw``) go into the
backbone's config, so every later stage (rule, channels, evaluation, bundle) uses them; with
``--recipe`` they apply on top of the replayed backbone config (e.g. a recipe replayed with the
approximate bank search for serving). ``fit_state.json`` keeps them: resuming a fit with other keys
is refused instead of mixing stages done with different settings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from ..util.jsonfile import read_json
from ..config import ConfigError
from ..data.dataset import load_dataset
from ..data.prepare import prepare
from ..data.sampler import eval_split
from ..evaluation.evaluate import evaluate_run, metric_cutoffs, new_items_view, rank_users
from ..evaluation.metrics import summarize
from ..models import build_model
from ..recipes.fit import evaluate_recipe, fit_recipe, load_run_recipe
from ..recipes.recipe import RECIPE_DIR, SETTING_KEYS
from ..serving.export import export_bundle
from ..training.train import make_config, resume, train
from ..util.atomic import atomic_write_text
from .rule import select_rule
from .settings import BUDGETS, RULE_TIE, derive_settings

STATE_FILE = "fit_state.json"
RECIPE_YAML = "recipe.yaml"
BACKBONE = "backbone"
FORMAT = "dmirec-fit"
ITEM_ITEM = ("itemknn", "rp3beta", "ease")
SCORING_KEYS = ("history_decay", "exclude_history")
STAGES = ("prepare", "settings", "train", "rule", "channels", "evaluate", "export")
LABELS = {"model": "backbone + neighbour rule", "itemknn": "ItemKNN", "rp3beta": "RP3beta", "ease": "EASE",
          "repeat": "repeat ranking"}


def is_fit_dir(path: str | Path) -> bool:
    """Whether ``path`` is the output folder of ``dmirec fit``."""
    return (Path(path) / STATE_FILE).exists() and (Path(path) / BACKBONE).is_dir()


def run_dir_of(path: str | Path) -> Path:
    """The run directory a command should read: ``DIR/backbone`` for a ``dmirec fit`` folder."""
    return Path(path) / BACKBONE if is_fit_dir(path) else Path(path)


def _read_state(out: Path) -> dict[str, Any]:
    path = out / STATE_FILE
    if not path.exists():
        return {"format": FORMAT, "stages": {}}
    state = read_json(path, ConfigError, hint="; remove it to start the fit again")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a dmirec fit state file")
    return state


def _save_state(out: Path, state: dict[str, Any]) -> None:
    atomic_write_text(out / STATE_FILE, json.dumps(state, indent=2) + "\n")


def read_recipe_yaml(path: str | Path) -> dict[str, Any]:
    """A ``recipe.yaml`` written by ``dmirec fit``, checked for the fields the replay needs."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such recipe file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a recipe written by dmirec fit (\"format: {FORMAT}\" missing)")
    for key in ("budget", "prepare", "settings", "backbone", "neighbour_rule", "channels", "merger"):
        if key not in spec:
            raise ConfigError(f"{path}: missing field {key!r}")
    return spec


def fit(source: str | Path, out: str | Path, budget: str = "standard", *, recipe: str | Path | None = None,
        seed: int = 2021, overrides: dict[str, Any] | None = None, new_items_only: bool = False,
        progress: bool = True, threads: int = 1, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the stages of the module docstring; returns the report (test metrics).

    ``new_items_only``: fit, measure and serve the recipe for the new-items view (items of the
    history never recommended; targets the user already had do not count), e.g. for check-in data
    when only places not yet visited matter."""
    out = Path(out)
    source = Path(source)
    fixed = read_recipe_yaml(recipe) if recipe is not None else None
    if fixed is not None:
        budget, seed = fixed["budget"], int(fixed["backbone"]["seed"])
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose one of {sorted(BUDGETS)}")
    plan = BUDGETS[budget]
    out.mkdir(parents=True, exist_ok=True)
    state = _read_state(out)
    done = state["stages"]
    given = {k: str(v) for k, v in (overrides or {}).items()}
    if done and "overrides" in state and state["overrides"] != given:  # older fit states kept no keys: not checked
        raise ConfigError(f"{out / STATE_FILE}: this fit was started with config keys {state.get('overrides', {})}, "
                          f"now {given}; resume it with the same keys or start a new --out folder")
    state["overrides"] = given
    started = time.perf_counter()

    def stage(i: int, name: str, note: str = "") -> bool:
        """Announce stage i; False when it is already done (resumed fit)."""
        if name in done:
            log(f"[{i}/{len(STAGES)}] {name}: done before (resumed){note}")
            return False
        log(f"[{i}/{len(STAGES)}] {name}{note}")
        return True

    def finish(name: str, value: Any) -> None:
        done[name] = value
        _save_state(out, state)

    # 1 prepare
    prepared = (source / "meta.json").exists()
    data_dir = source if prepared else out / "data"
    if stage(1, "prepare", f" ({'a prepared folder' if prepared else source})"):
        prep = (fixed or {}).get("prepare") or {"core": 5, "seed": 1230}
        if not prepared:
            report = prepare(source, data_dir, core=int(prep["core"]), seed=int(prep["seed"]))
            log("  " + report.summary().replace("\n", "\n  "))
        finish("prepare", {"source": str(source.resolve()), "data": str(data_dir.resolve()), "prepared_input": prepared,
                           **prep})
    data = load_dataset(data_dir, mmap=True)

    # 2 settings
    if stage(2, "settings"):
        settings = dict(fixed["settings"]) if fixed else derive_settings(data)
        if fixed and new_items_only and not settings.get("new_items_only", False):
            raise ConfigError(f"{recipe}: the recipe was fitted for the published view; --new-items-only "
                              "needs a fit without --recipe")
        settings["new_items_only"] = bool(settings.get("new_items_only", False) or new_items_only)
        finish("settings", settings)
    settings = done["settings"]
    if not fixed and bool(settings.get("new_items_only", False)) != bool(new_items_only):
        raise ConfigError(f"{out / STATE_FILE}: this fit was started with new_items_only="
                          f"{settings.get('new_items_only', False)}; resume it the same way or start a new --out folder")
    log(f"  seq_len {settings['seq_len']} (median history {settings['median_history']:g}); repeats "
        f"{settings['repeat_share']:.1%} of validation targets; {settings['num_items']:,} items")

    # 3 train the backbone
    run = out / BACKBONE
    if stage(3, "train", " (REMI to early stopping)"):
        if fixed:
            bb = {**fixed["backbone"]["config"], **(overrides or {})}
        else:
            bb = {"seq_len": settings["seq_len"], "seed": seed, **plan["backbone"], **(overrides or {})}
        bb.update(progress=progress, threads=threads)
        if (run / "result.json").exists():
            result = json.loads((run / "result.json").read_text())
        elif (run / "checkpoints" / "last.pt").exists():
            result = resume(run)
        else:
            result = train(make_config("remi", overrides=bb), data_dir, run)
        info = {"steps": result["steps"], "best_step": result["best_step"], "stopped": result["stopped"],
                "valid_recall@50": result["valid_recall@50"],
                "config": {k: v for k, v in bb.items() if k not in ("progress", "threads")}}
        finish("train", info)
    info = done["train"]
    if info["stopped"] != "patience":
        log(f"  note: the backbone stopped by {info['stopped']} at step {info['steps']}, not by early stopping: it is "
            f"probably under-trained (budget {budget}; `--budget standard` trains to early stopping)")

    # 4 the neighbour rule
    if stage(4, "rule", " (neighbour rule on validation users)"):
        if fixed:
            rule = dict(fixed["neighbour_rule"])
        else:
            chosen = select_rule(run, plan["rule_grid"], RULE_TIE, log=lambda s: log(f"  {s}"))
            rule = {"neighbour_alpha": chosen["neighbour_alpha"], "neighbours": chosen["neighbours"],
                    "valid_recall@50": chosen["valid_recall@50"], "grid": chosen["grid"]}
        finish("rule", rule)
    rule = done["rule"]
    log(f"  neighbour rule: alpha {rule['neighbour_alpha']:g}, n {rule['neighbours']}")

    # 5 channels and the merger
    if stage(5, "channels"):
        names = ["model", "itemknn", "rp3beta"] + (["ease"] if settings["ease"] and plan.get("ease", True) else []) + \
            (["repeat"] if settings["repeat_channel"] else [])
        over = {"neighbour_alpha": rule["neighbour_alpha"], "neighbours": rule["neighbours"]}
        kwargs: dict[str, Any] = {k: plan[k] for k in ("itemknn_grid", "rp3beta_grid", "ease_grid", "scoring_grid",
                                                       "weights") if plan.get(k) is not None}
        if fixed:
            ch = fixed["channels"]
            names = list(ch)
            over["exclude_history"] = bool(ch["model"].get("exclude_history", False))
            kwargs = {"model_exclusion": False, "fixed_merger": fixed["merger"], "channel_scoring": {}}
            for name in ITEM_ITEM:
                if name in ch:
                    c = ch[name]
                    kwargs[f"{name}_grid"] = [{k: v for k, v in c.items() if k not in SCORING_KEYS}]
                    kwargs["channel_scoring"][name] = [{k: c[k] for k in SCORING_KEYS}]
        record = fit_recipe(run, names, overrides=over, new_items_only=bool(settings.get("new_items_only", False)),
                            log=lambda s: log(f"  {s}"), **kwargs)
        rec = record.pop("recipe")
        chosen = {c.name: _channel_choice(c) for c in rec.channels}
        finish("channels", {"channels": names, "chosen": chosen,
                            "merger": {"merger": rec.merger, "k": rec.k, "weights": list(rec.weights)},
                            "valid": record["chosen"], "channels_alone_valid": record["channels_alone"],
                            "notes": record["notes"]})
    ch_state = done["channels"]
    log("  merged: " + ", ".join(f"{n} {w:g}" for n, w in zip(ch_state["channels"], ch_state["merger"]["weights"]))
        + f" ({ch_state['merger']['merger']}); valid recall@50 {ch_state['valid']['recall@50']:.4f}")

    # 6 evaluate on test users
    if stage(6, "evaluate", " (test users: the recipe beside each channel alone)"):
        report = _evaluate(run)
        finish("evaluate", report)
        _write_report(out, done, budget)
    report = done["evaluate"]

    # 7 export
    if stage(7, "export", f" ({out / 'bundle'})"):
        manifest = export_bundle(run, out / "bundle", overwrite=True, query_sample=1000)
        finish("export", {"bundle": str((out / "bundle").resolve()), "served": manifest.get("served")})
    _write_recipe_yaml(out, done, budget)
    log(f"recipe: {out / RECIPE_YAML}; report: {out / 'report.md'}; bundle: {out / 'bundle'} "
        f"(serve it with `dmirec serve {out / 'bundle'}`); {time.perf_counter() - started:.0f} s")
    return report


def _channel_choice(ch) -> dict[str, Any]:
    """The settings recipe.yaml keeps for a channel (what the replay fixes)."""
    keys = ("exclude_history",) if ch.name == "model" else SETTING_KEYS.get(ch.config.model, ())
    return {k: getattr(ch.config, k) for k in keys}


def _evaluate(run: Path) -> dict[str, Any]:
    """Test metrics of the recipe, each channel alone, REMI without the rule and most-popular."""
    recipe, _, cfg, data = load_run_recipe(run, run / RECIPE_DIR)
    ns = metric_cutoffs(cfg)
    new_items = bool(recipe.info.get("new_items_only", False))
    rec = evaluate_recipe(recipe, data, "test", cfg.seq_len, ns, new_items_only=new_items, channels_alone=True)
    rows = {"recipe": {k: float(v) for k, v in rec.items() if "@" in k or k == "users"}}
    for name, m in rec["channels"].items():
        rows[name] = {k: float(v) for k, v in m.items() if "@" in k or k == "users"}
    plain = evaluate_run(run, split="test", new_items_only=new_items)
    rows["remi"] = {k: float(v) for k, v in plain.items() if "@" in k or k == "users"}
    pop_model = build_model(cfg.replace(model="most-popular", num_interests=1, max_steps=0, neighbour_alpha=0.0,
                                        repeat_channel=False), data.num_items, data.item_popularity("train"))
    ev = eval_split(data.splits["test"], cfg.seq_len)
    if new_items:
        ev, _ = new_items_view(ev)
    pop = summarize(rank_users(pop_model, ev, max(ns), exclude_history=new_items).ids, ev.targets, ns)
    rows["most-popular"] = {k: float(v) for k, v in pop.items() if "@" in k or k == "users"}
    return rows


def _write_report(out: Path, done: dict[str, Any], budget: str) -> None:
    report = done["evaluate"]
    labels = {"recipe": "**fitted recipe (served)**", **LABELS, "remi": "REMI (backbone, no rule)",
              "most-popular": "most-popular"}
    lines = [f"# dmirec fit: {done['prepare']['source']}", "",
             f"Budget `{budget}`; backbone REMI stopped by {done['train']['stopped']} at step {done['train']['steps']} "
             f"(best {done['train']['best_step']}); neighbour rule alpha {done['rule']['neighbour_alpha']:g}, "
             f"n {done['rule']['neighbours']}; merger {done['channels']['merger']['merger']} with weights "
             + ", ".join(f"{n} {w:g}" for n, w in zip(done["channels"]["channels"], done["channels"]["merger"]["weights"]))
             + ". Everything was chosen on validation users; the table is test users"
             + (" in the new-items view (history items never recommended; targets already in the history "
                "removed, users left without a target skipped)" if done["settings"].get("new_items_only") else "")
             + ".", "",
             "| method | Recall@20 | Recall@50 | NDCG@50 | HitRate@50 |", "|---|---|---|---|---|"]
    for key, m in report.items():
        lines.append(f"| {labels.get(key, key)} | {m['recall@20']:.4f} | {m['recall@50']:.4f} | {m['ndcg@50']:.4f} | "
                     f"{m['hitrate@50']:.4f} |")
    lines += ["", f"Users: {int(report['recipe']['users'])}."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")


def _write_recipe_yaml(out: Path, done: dict[str, Any], budget: str) -> None:
    """Every choice of the fit, enough for ``dmirec fit --recipe`` to replay it without search."""
    spec = {
        "format": FORMAT,
        "budget": budget,
        "prepare": {k: done["prepare"][k] for k in ("core", "seed") if k in done["prepare"]},
        "settings": done["settings"],
        "backbone": {"model": "remi", "seed": done["train"]["config"]["seed"], "config": done["train"]["config"],
                     "stopped": done["train"]["stopped"], "steps": done["train"]["steps"],
                     "best_step": done["train"]["best_step"]},
        "neighbour_rule": {k: done["rule"][k] for k in ("neighbour_alpha", "neighbours")},
        "channels": done["channels"]["chosen"],
        "merger": done["channels"]["merger"],
        "validation": {"recall@50": done["channels"]["valid"]["recall@50"]},
        "test": done.get("evaluate", {}).get("recipe"),
    }
    atomic_write_text(out / RECIPE_YAML, "# written by `dmirec fit`; replay with `dmirec fit SOURCE --recipe "
                      "recipe.yaml --out DIR`\n" + yaml.safe_dump(spec, sort_keys=False))
