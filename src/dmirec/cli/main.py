"""The ``dmirec`` command line: a thin argparse layer that wires the package's functions together.

    dmirec prepare INPUT OUTDIR [--format ...] [--core 5] [--seed 1230] [--name NAME] [--comirec-files]
    dmirec train --data OUTDIR --model NAME --out RUN_DIR [--seed N] [--device ...] [--config f.yaml] [--key=value ...]
    dmirec train --resume RUN_DIR
    dmirec evaluate RUN_DIR [--split valid|test] [--exclude-history] [--ns 10,20,50,100] [--new-items-only | --both-views] [--json]
    dmirec report RUN_DIR [--out report.html] [--categories FILE] [--bundle BUNDLE_DIR]
    dmirec compare RUN_DIR... [--by model] [--metric recall@50] [--out FILE.md|FILE.html]
    dmirec fit-repeat RUN_DIR [--output repeat.json]
    dmirec fit LOG_OR_PREPARED_DIR --out DIR [--budget quick|standard|full] [--recipe recipe.yaml] [--new-items-only]
    dmirec fit-channels RUN_DIR [--channels model,itemknn,ease,repeat] [--key=value ...]
    dmirec export RUN_DIR BUNDLE_DIR
    dmirec index BUNDLE_DIR --kind flat|hnsw|ivf|ivfpq
    dmirec serve BUNDLE_DIR --port 8000
    dmirec recommend BUNDLE_DIR --input LOG --output candidates.parquet -n 200
    dmirec synth OUT.parquet [--preset books|100m|small] [--users N --items N --clusters C --seed S]
    dmirec demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..config import ConfigError, config_keys_help, from_dict, parse_overrides
from ..data.prepare import prepare
from ..data.stream_prepare import prepare_streaming
from ..data.synth_log import spec_from, write_log
from ..evaluation.compare import compare, to_markdown, write_outputs
from ..evaluation.evaluate import evaluate_run, metric_cutoffs
from ..evaluation.repeat_fit import fit_repeat_run
from ..evaluation.report import _plt, build_report
from ..pipeline.fit import fit, run_dir_of
from ..recipes.fit import evaluate_recipe, fit_recipe, load_run_recipe, run_recipe_folder
from ..runs.rundir import unfinished_note
from ..serving.app_options import add_serve_arguments
from ..serving.batch import recommend_batch
from ..serving.export import export_bundle
from ..serving.index import DEFAULTS, build_index
from ..training.train import make_config, resolve_device, resume, train
from .demo import run_demo
from .tables import _metrics_table


def cmd_prepare(args: argparse.Namespace) -> int:
    cols = {k: v for k, v in (("user_col", args.user_col), ("item_col", args.item_col), ("time_col", args.time_col)) if v}
    if args.stream:  # bounded memory: csv/parquet read in record batches (dmirec.data.stream_prepare)
        report = prepare_streaming(args.input, args.outdir, format=args.format, core=args.core, seed=args.seed,
                                   name=args.name, comirec_files=args.comirec_files, **cols)
        print(report.summary())
        return 0
    report = prepare(args.input, args.outdir, format=args.format, core=args.core, seed=args.seed, name=args.name,
                     comirec_files=args.comirec_files, **cols)
    print(report.summary())
    return 0


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    if args.resume:
        if args.data or args.model or args.config or args.backbone or args.seed is not None:
            raise ConfigError("--resume takes the run directory (and --max_steps=N to extend it): its saved "
                              "config is used as is")
        overrides = parse_overrides(extra)
        if args.device is not None:
            overrides["device"] = args.device
        result = resume(args.resume, overrides=overrides)
    else:
        if not args.data or not args.out:
            raise ConfigError("train needs --data DIR and --out RUN_DIR (or --resume RUN_DIR)")
        overrides = parse_overrides(extra)
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.device is not None:
            overrides["device"] = args.device
        if args.backbone is not None:
            overrides["backbone"] = args.backbone
        if args.ns is not None:
            overrides["metric_ns"] = args.ns
        if args.tensorboard:
            overrides["tensorboard"] = True
        cfg = make_config(args.model, args.config or [], overrides)
        out = Path(args.out)
        if (out / "checkpoints" / "last.pt").exists():
            raise ConfigError(f"{out} already holds a run; use --resume {out} or choose another --out")
        result = train(cfg, args.data, out)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    print(_metrics_table(result["test"], f"{result['model']} on {result['dataset']} (test, best step "
                                         f"{result['best_step']}, stopped: {result['stopped']})"))
    return 0


def cmd_evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    note = unfinished_note(args.run_dir)
    if note:
        print(f"dmirec evaluate: note: {note}", file=sys.stderr)
    ns = from_dict({"metric_ns": args.ns}).metric_ns if args.ns is not None else None
    channel = {"on": True, "off": False}.get(args.repeat_channel)
    views = [("published", False), ("new_items", True)] if args.both_views else \
        [("new_items" if args.new_items_only else "", True if args.new_items_only else None)]
    folder = run_recipe_folder(args.run_dir, args.recipe)
    out = {}
    for name, new_only in views:
        if folder is not None:  # the fitted recipe, exactly as it is served
            metrics = _evaluate_recipe(args, folder, extra, ns, new_only)
        else:
            metrics = None
        # --key=value: evaluation-time config changes (neighbour rule, guidance, sampler, ...)
        metrics = metrics or evaluate_run(args.run_dir, split=args.split, exclude_history=args.exclude_history or None,
                               backend=args.backend, which=args.checkpoint, overrides=parse_overrides(extra) or None,
                               device=resolve_device(args.device), ns=ns, new_items_only=new_only,
                               repeat_channel=channel, repeat_params=args.repeat_params)
        if ns is None:  # the fixed set of keys scripts rely on
            keys = [f"{m}@{n}" for m in ("recall", "hitrate", "ndcg", "ndcg_comirec") for n in (20, 50)] + ["users"]
        else:  # every metric at every cutoff
            keys = [k for k in metrics if "@" in k] + ["users"]
        out[name] = {k: metrics[k] for k in keys + ["skipped_users"] if k in metrics}
        if not args.json:
            label = f", {name.replace('_', '-')} view" if name else ""
            print(_metrics_table(metrics, f"{args.run_dir} ({args.split}{label})"))
    if args.json:
        print(json.dumps(out if args.both_views else next(iter(out.values()))))
    return 0


def _evaluate_recipe(args: argparse.Namespace, folder, extra: list[str], ns, new_only) -> dict:
    """Metrics of a run's fitted recipe (``dmirec evaluate RUN_DIR`` when RUN_DIR/recipe exists)."""
    if args.exclude_history or args.repeat_channel or args.repeat_params or args.backend:
        raise ConfigError("the recipe fixes history exclusion, the repeat channel and the search; pass --recipe none "
                          "to evaluate the run's model alone with other settings")
    recipe, _, cfg, data = load_run_recipe(args.run_dir, folder, parse_overrides(extra) or None)
    cutoffs = metric_cutoffs(cfg if ns is None else cfg.replace(metric_ns=tuple(ns)))
    view = recipe.info.get("new_items_only", False) if new_only is None else new_only
    return evaluate_recipe(recipe, data, args.split, cfg.seq_len, cutoffs, new_items_only=bool(view))


def cmd_fit_channels(args: argparse.Namespace, extra: list[str]) -> int:
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    rec = fit_recipe(args.run_dir, channels, overrides=parse_overrides(extra) or None, depth=args.depth,
                     max_users=args.max_users or 0, new_items_only=args.new_items_only,
                     log=lambda s: print(f"  {s}", flush=True))
    c = rec["chosen"]
    print(f"recipe for {args.run_dir} on {rec['dataset']}, chosen on {rec['users']} validation users "
          f"over {len(rec['merger_grid'])} merger settings ({rec['seconds']:.1f} s):")
    for name, alone in rec["channels_alone"].items():
        print(f"  {name:<12} alone: valid recall@50 {alone['recall@50']:.4f}")
    weights = ", ".join(f"{n} {w:g}" for n, w in zip(rec["channels"], c["weights"]))
    print(f"  merged ({c['merger']}{', k=' + format(c['k'], 'g') if c['merger'] == 'rrf' else ''}; {weights}): "
          f"valid recall@50 {c['recall@50']:.4f}")
    print(f"written to {rec['output']}; `dmirec evaluate {args.run_dir}` and `dmirec export` use it")
    return 0


def cmd_fit(args: argparse.Namespace, extra: list[str]) -> int:
    fit(args.source, args.out, args.budget, recipe=args.recipe, seed=args.seed,
        overrides=parse_overrides(extra) or None, new_items_only=args.new_items_only, progress=args.progress,
        threads=args.threads)
    print(Path(args.out, "report.md").read_text())
    return 0


def cmd_fit_repeat(args: argparse.Namespace) -> int:
    rec = fit_repeat_run(args.run_dir, args.output, args.checkpoint, args.backend, args.max_users or 0)
    c, m, key = rec["chosen"], rec["model"], rec["metric"]
    print(f"repeat channel for {rec['model_name']} on {rec['dataset']}, chosen on {rec['users']} validation "
          f"users over {len(rec['grid'])} grid points ({rec['seconds']:.1f} s):")
    print(f"  weight={c['weight']} recency={c['recency']} bias={c['bias']}  valid {key} "
          f"{m[key]:.4f} -> {c[key]:.4f}, recall@20 {m['recall@20']:.4f} -> {c['recall@20']:.4f}")
    print(f"written to {rec['output']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.workdir, args.steps, args.seed, args.threads, args.progress, args.report, args.report_users,
                    args.dmi_steps)


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic log with planted interests (streamed, bounded memory)."""
    spec = spec_from(args.preset, users=args.users, items=args.items, clusters=args.clusters, seed=args.seed,
                     chunk_users=args.chunk_users)
    start = time.perf_counter()
    record = write_log(spec, args.output, args.format)
    print(f"wrote {record['rows']:,} interactions of {spec.users:,} users and {spec.items:,} items to "
          f"{args.output} ({record['format']}) in {time.perf_counter() - start:.1f} s; spec in {args.output}.json")
    return 0


def cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        _plt()
    except ImportError as exc:
        raise ConfigError(str(exc)) from None
    out = build_report(args.run_dir, args.out, categories=args.categories, category_ids=args.category_ids,
                       users=args.users, seed=args.seed, bundle=args.bundle, overrides=parse_overrides(extra) or None)
    print(f"wrote {out} (and its figures as {out.stem}_*.png beside it)")
    return 0


def cmd_compare(args: argparse.Namespace, extra: list[str]) -> int:
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    c = compare(args.run_dirs, by, args.metric, not args.no_paired, args.baseline, args.bootstrap, args.seed,
                overrides=parse_overrides(extra) or None, unpaired=args.unpaired)
    print(to_markdown(c))
    if args.out:
        print(f"wrote {write_outputs(c, args.out)}")
    return 0


def cmd_export(args: argparse.Namespace, extra: list[str]) -> int:
    note = unfinished_note(args.run_dir)
    if note:
        print(f"dmirec export: note: {note}", file=sys.stderr)
    # --key=value: evaluation-time changes (e.g. the neighbour rule), served as evaluated
    manifest = export_bundle(args.run_dir, args.bundle_dir, which=args.which, query_sample=args.query_sample,
                             overwrite=args.overwrite, overrides=parse_overrides(extra) or None,
                             repeat_params=args.repeat_params, recipe=args.recipe)
    what = (f"recipe of {len(manifest['recipe']['channels'])} channels ({manifest['recipe']['merger']})"
            if manifest.get("recipe") else manifest["model"])
    print(f"exported {what} ({manifest['num_items']} items, D={manifest['embedding_dim']}, "
          f"K={manifest['num_interests']}, {manifest['query_sample_users']} sample users) to {args.bundle_dir}")
    served = manifest.get("served")
    if served:
        print(f"served lists on test users: recall@50 {served['metrics'].get('recall@50', float('nan')):.4f}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    opts = {k: getattr(args, k) for k in (*DEFAULTS, "train_size", "seed")}
    build_index(args.bundle_dir, args.kind, recall_n=args.recall_n or 50, threads=args.threads, **opts)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serving.app import SERVE_OPTIONS, run_server  # local: FastAPI is the optional `serve` extra

    resolve_device(args.device)  # --device cuda without a GPU: the same error as train's
    run_server(args.bundle_dir, port=args.port, **{k: getattr(args, k) for k in SERVE_OPTIONS})
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    cols = {k: getattr(args, k) for k in ("user_col", "item_col", "time_col") if getattr(args, k)}
    stats = recommend_batch(args.bundle_dir, args.input, args.output, args.n, args.format, args.chunk_users or 4096,
                            exclude_history=args.exclude_history, progress=args.progress, **cols)
    print(f"{stats['users']} users ({stats['rows']} rows, {stats['unknown_rows']} unknown items, "
          f"{stats['fallback_users']} on the popularity fallback) -> {stats['candidates']} candidates in "
          f"{stats['output']} ({stats['seconds']:.1f} s, {stats['users_per_second']} users/s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmirec", description="Multi-interest retrieval: DMI and baselines.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="turn an interaction log into the ComiRec/REMI protocol arrays")
    p.add_argument("input")
    p.add_argument("outdir")
    p.add_argument("--format", choices=["csv", "parquet", "recbole", "comirec"], default=None)
    p.add_argument("--core", type=int, default=5)
    p.add_argument("--seed", type=int, default=1230)
    p.add_argument("--name", default=None)
    p.add_argument("--comirec-files", action="store_true", help="also write NAME_train/valid/test.txt and id maps")
    p.add_argument("--stream", action="store_true",
                   help="read a csv/parquet log in batches (bounded memory for large logs; same output)")
    p.add_argument("--user-col", default=None)
    p.add_argument("--item-col", default=None)
    p.add_argument("--time-col", default=None)

    keys_help = config_keys_help()
    p = sub.add_parser("train", help="train a model (extra --key=value pairs override the config)",
                       epilog=keys_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--backbone", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--config", action="append", help="YAML config file (repeatable)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR")
    p.add_argument("--ns", default=None, help="extra metric cutoffs, e.g. 10,20,50,100 (20 and 50 are always there)")
    p.add_argument("--tensorboard", action="store_true", help="also log the scalars for TensorBoard (extra)")

    p = sub.add_parser("evaluate", help="evaluate a run's best checkpoint", epilog=keys_help,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--exclude-history", action="store_true")
    p.add_argument("--backend", choices=["auto", "torch", "faiss"], default=None)
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--ns", default=None, help="metric cutoffs, e.g. 10,20,50,100 (20 and 50 are always there)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--new-items-only", action="store_true",
                      help="targets already in the history removed, history items excluded from the candidates")
    view.add_argument("--both-views", action="store_true", help="report the published and the new-items view")
    p.add_argument("--repeat-channel", choices=["on", "off"], default=None,
                   help="the repeat channel on/off (default: the run's config and repeat.json)")
    p.add_argument("--repeat-params", default=None, metavar="FILE",
                   help="repeat channel parameters (default: RUN_DIR/repeat.json when it exists)")
    p.add_argument("--recipe", default="auto", metavar="auto|none|DIR",
                   help="evaluate the fitted recipe of channels: auto = RUN_DIR/recipe when it exists (default), "
                        "none = the run's model alone, or a recipe folder")

    p = sub.add_parser("fit", help="from a log (or prepared folder) to a served recipe: prepare, train REMI, fit the "
                                   "neighbour rule, ItemKNN/EASE/repeat channels and their merger on validation users, "
                                   "evaluate on test users, export a bundle (extra --key=value pairs set the backbone)",
                       epilog=keys_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="an interaction log (csv, parquet, RecBole .inter) or a prepared dataset folder")
    p.add_argument("--out", required=True, help="output folder (resumable: run the same command again after a kill)")
    p.add_argument("--budget", choices=["quick", "standard", "full"], default="standard",
                   help="quick: a short backbone run and small grids; standard: early stopping (default); "
                        "full: wider grids")
    p.add_argument("--recipe", default=None, metavar="recipe.yaml", help="replay the choices of an earlier fit")
    p.add_argument("--new-items-only", action="store_true",
                   help="fit, measure and serve the recipe for the new-items view (history items never recommended)")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training (0 = torch's default)")
    p.add_argument("--no-progress", dest="progress", action="store_false")

    p = sub.add_parser("fit-channels", help="choose a recipe of channels and its merger on validation users "
                                            "(extra --key=value pairs set the run's own channel, e.g. the neighbour rule)",
                       epilog=keys_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--channels", default="model,itemknn,ease",
                   help="comma list of model (the run), itemknn, ease, repeat, or other run directories on the same data")
    p.add_argument("--depth", type=int, default=200, help="candidates per channel before the merge")
    p.add_argument("--max-users", type=int, default=0, help="first validation users only (0 = all)")
    p.add_argument("--new-items-only", action="store_true",
                   help="fit for the new-items view (history excluded, repeated targets dropped)")

    p = sub.add_parser("fit-repeat", help="choose the repeat channel's parameters on validation users")
    p.add_argument("run_dir")
    p.add_argument("--output", default=None, help="where to write them (default RUN_DIR/repeat.json)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--backend", choices=["auto", "torch", "faiss"], default=None)
    p.add_argument("--max-users", type=int, default=0, help="first validation users only (0 = all)")

    p = sub.add_parser("demo", help="dmirec fit on the shipped beauty data, DMI beside the fitted recipe: table and report")
    p.add_argument("--workdir", default="demo_run")
    p.add_argument("--dmi-steps", type=int, default=1000, help="training steps of DMI's refiner on the frozen backbone")
    p.add_argument("--steps", type=int, default=4000, help="training steps of the REMI backbone")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0 = torch's default; 1 stays fast when other jobs share the cores)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-report", dest="report", action="store_false")
    p.add_argument("--report-users", type=int, default=1000)

    p = sub.add_parser("report", help="an HTML report (figures embedded) of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="HTML file (default RUN_DIR/report/report.html); PNGs go beside it")
    p.add_argument("--categories", default=None, help="item->category file: CSV item,category, RecBole .item, "
                                                       "or ComiRec NAME_item_cate.txt")
    p.add_argument("--category-ids", choices=["auto", "raw", "new"], default="auto",
                   help="ids in the category file: raw (as in the log), new (prepared 1..N), auto "
                        "(new for *_item_cate.txt)")
    p.add_argument("--bundle", default=None, help="a bundle exported from the run: report its index recall")
    p.add_argument("--users", type=int, default=1000, help="test users sampled for the diagnostics (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the user sample")

    p = sub.add_parser("compare", help="test metrics of several runs grouped by config, seed spread, paired test")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--by", default=None, help="group by these config keys (comma list) instead of config minus seed")
    p.add_argument("--metric", default="recall@50", help="metric of the chart and the paired test")
    p.add_argument("--baseline", default=None, help="group label the others are paired against (default: first)")
    p.add_argument("--no-paired", action="store_true", help="skip the per-user paired test (it re-evaluates runs)")
    p.add_argument("--unpaired", action="store_true",
                   help="accept runs on different splits of a dataset (separate groups, never paired)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="FILE.md (chart as FILE.png beside it) or FILE.html")

    p = sub.add_parser("synth", help="write a synthetic interaction log with planted interests (csv or parquet)")
    p.add_argument("output", help="OUT.parquet or OUT.csv")
    p.add_argument("--preset", choices=["small", "books", "100m"], default=None)
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--items", type=int, default=None)
    p.add_argument("--clusters", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chunk-users", type=int, default=None)
    p.add_argument("--format", choices=["parquet", "csv"], default=None)

    p = sub.add_parser("export", help="export a run as a self-contained serving bundle", epilog=keys_help,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("bundle_dir")
    p.add_argument("--checkpoint", dest="which", choices=["best", "last"], default="best")
    p.add_argument("--query-sample", type=int, default=1000, help="validation users whose interests are stored")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--repeat-params", default=None, metavar="FILE",
                   help="repeat channel parameters (default: RUN_DIR/repeat.json when it exists)")
    p.add_argument("--recipe", default="auto", metavar="auto|none|DIR",
                   help="serve the fitted recipe of channels: auto = RUN_DIR/recipe when it exists (default), "
                        "none = the run's model alone, or a recipe folder")

    p = sub.add_parser("index", help="build a faiss index in a bundle and measure its recall")
    p.add_argument("bundle_dir")
    p.add_argument("--kind", choices=["flat", "hnsw", "ivf", "ivfpq"], default="flat")
    p.add_argument("--hnsw-m", type=int, default=None)
    p.add_argument("--ef-construction", type=int, default=None)
    p.add_argument("--ef-search", type=int, default=None)
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--recall-n", type=int, default=None)
    p.add_argument("--train-size", type=int, default=None, help="IVF: vectors used to train the coarse quantiser")
    p.add_argument("--pq-m", type=int, default=None, help="ivfpq: bytes per vector (divides D; default 8)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)

    p = sub.add_parser("serve", help="answer recommendation requests over HTTP")

    add_serve_arguments(p)

    p = sub.add_parser("recommend", help="batch candidates for every user of an interaction log")
    p.add_argument("bundle_dir")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--format", choices=["csv", "parquet", "recbole", "comirec"], default=None)
    p.add_argument("--chunk-users", type=int, default=4096)
    p.add_argument("--exclude-history", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--user-col", default=None, help="user column name (default user_id, or user)")
    p.add_argument("--item-col", default=None, help="item column name (default item_id, or item)")
    p.add_argument("--time-col", default=None, help="timestamp column name (default timestamp)")
    for p in sub.choices.values():
        p.allow_abbrev = False  # --se=3 is not --seed=3: a config key override must be spelled out
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("evaluate", "export", "report", "fit-channels", "fit-repeat"):
        args.run_dir = str(run_dir_of(args.run_dir))  # a `dmirec fit` folder: its backbone run and recipe
    if args.command == "compare":
        args.run_dirs = [str(run_dir_of(r)) for r in args.run_dirs]
    takes_overrides = args.command == "train" or (args.command in ("evaluate", "export", "fit-channels", "fit",
                                                                   "report", "compare")
                                                  and all(e.startswith("--") and "=" in e for e in extra))
    if extra and not takes_overrides:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        if args.command == "train":
            return cmd_train(args, extra)
        if args.command == "evaluate":
            return cmd_evaluate(args, extra)
        if args.command == "export":
            return cmd_export(args, extra)
        if args.command == "fit-channels":
            return cmd_fit_channels(args, extra)
        if args.command == "fit":
            return cmd_fit(args, extra)
        if args.command in ("report", "compare"):
            return (cmd_report if args.command == "report" else cmd_compare)(args, extra)
        handler = {"prepare": cmd_prepare, "demo": cmd_demo, "index": cmd_index, "serve": cmd_serve,
                   "recommend": cmd_recommend, "synth": cmd_synth,
                   "fit-repeat": cmd_fit_repeat}[args.command]
        return handler(args)
    except (ConfigError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"dmirec {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
