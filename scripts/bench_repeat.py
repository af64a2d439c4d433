#!/usr/bin/env python
"""Repeat benchmark: the repeat baseline, and any finished run with and without the repeat channel.

    python scripts/bench_repeat.py baseline bench_data/gowalla bench_data/beauty [--seed 2021]
    python scripts/bench_repeat.py channel bench_runs/gowalla-remi-s2021 [--label remi]
    python scripts/bench_repeat.py channel RUN --label remi-rule --set neighbour_alpha=0.5 neighbours=16
    python scripts/bench_repeat.py stats bench_data/gowalla bench_data/beauty   # targets that repeat history
    python scripts/bench_repeat.py report                  # markdown tables from bench_results/repeat/

Both views on valid and test users: the protocol as published (targets that repeat history
items count) and the new-items view (those targets removed, history items excluded from the
candidates, users left without a target skipped). ``baseline`` trains ``--model repeat`` (nothing
to train) through ``dmirec.training.train`` into bench_runs/repeat/ and evaluates it. ``channel`` fits the
repeat channel of a finished run on its validation users (``dmirec fit-repeat``; the parameters
are written beside the records, never into the run directory, which is only read) and evaluates
the run without and with it (a run whose config predates a key rename is read through a copy
with the keys translated). One JSON record per (dataset, model, seed) goes to
bench_results/repeat/ with the resolved config, git commit, seed, machine and wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench import git_commit as commit, machine  # noqa: E402

RESULTS = ROOT / "bench_results" / "repeat"
RUNS = ROOT / "bench_runs" / "repeat"
SPLITS = ("valid", "test")
VIEWS = (("published", False), ("new_items", True))
KEYS = ("recall@20", "recall@50", "hitrate@20", "hitrate@50", "ndcg@20", "ndcg@50", "users", "skipped_users")


def readable(run_dir: Path) -> Path:
    """The run directory as it is: configs saved before a key rename load through
    :func:`dmirec.config.upgrade_saved`."""
    return run_dir


def with_settings(run_dir: Path, settings: list[str]) -> Path:
    """The run as it is, or (``--set KEY=VALUE ...``, evaluation-time keys such as the neighbour
    rule) a copy in a temporary folder whose config.yaml has those keys: checkpoints and data
    reference are linked, never changed."""
    if not settings:
        return run_dir
    import tempfile

    from dmirec.runs import rundir
    from dmirec.config import from_dict, parse_overrides

    copy = Path(tempfile.mkdtemp(prefix=f"{run_dir.name}-")) / run_dir.name
    copy.mkdir()
    for item in run_dir.iterdir():
        if item.name not in ("config.yaml", "repeat.json"):
            (copy / item.name).symlink_to(item.resolve())
    cfg = rundir.read_config(run_dir)
    rundir.write_config(copy, from_dict({**cfg.to_dict(), **parse_overrides(settings)}, source="--set"))
    return copy


def both_views(run_dir: Path, **kwargs) -> dict:
    """{split: {view: metrics}} for the run, evaluated as ``evaluate_run(**kwargs)``."""
    from dmirec.evaluation.evaluate import evaluate_run

    out: dict = {}
    for split in SPLITS:
        out[split] = {}
        for view, new_only in VIEWS:
            m = evaluate_run(run_dir, split, new_items_only=new_only, **kwargs)
            out[split][view] = {k: m[k] for k in KEYS if k in m}
    return out


def recall_parts(run_dir: Path, **kwargs) -> dict:
    """{split: recall@n and the part of it from hits on history items (repeats)}, published view."""
    import numpy as np

    from dmirec.data.sampler import eval_split
    from dmirec.evaluation.evaluate import load_run, rank_users
    from dmirec.evaluation.metrics import hit_matrix
    from dmirec.repeats.params import with_repeat_params
    from dmirec.repeats.channel import channel_from_config

    model, cfg, data = load_run(run_dir)
    cfg = with_repeat_params(cfg, run_dir, kwargs.get("repeat_params"))
    if kwargs.get("repeat_channel") is not None:
        cfg = cfg.replace(repeat_channel=kwargs["repeat_channel"])
    out = {}
    for split in SPLITS:
        ev = eval_split(data.splits[split], cfg.seq_len)
        res = rank_users(model, ev, 50, cfg.retrieval_backend, cfg.exclude_history, cfg.eval_batch_size,
                         repeat=channel_from_config(cfg))
        hits = hit_matrix(res.ids, ev.targets)  # (U, 50)
        in_hist = np.array([np.isin(ids, h) for ids, h in zip(res.ids, ev.full_history)])  # (U, 50)
        n_targets = np.array([len(t) for t in ev.targets], dtype=np.float64)  # (U,)
        out[split] = {}
        for n in (20, 50):
            out[split][f"recall@{n}"] = float((hits[:, :n].sum(axis=1) / n_targets).mean())
            out[split][f"recall@{n}_from_repeats"] = float(((hits & in_hist)[:, :n].sum(axis=1) / n_targets).mean())
            out[split][f"history_slots@{n}"] = float(in_hist[:, :n].sum(axis=1).mean())
    return out


def write_record(name: str, record: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def cmd_baseline(args) -> None:
    import torch

    from dmirec.runs.rundir import read_config
    from dmirec.training.train import make_config, train

    torch.set_num_threads(1)
    for data_dir in map(Path, args.data):
        start = time.perf_counter()
        name = json.loads((data_dir / "meta.json").read_text())["name"]
        tag = f"{name}-repeat-s{args.seed}"
        run_dir = RUNS / tag
        if not (run_dir / "result.json").exists():
            cfg = make_config("repeat", [], {"seed": args.seed, "progress": False, "threads": 1,
                                             "repeat_decay": args.decay})
            train(cfg, data_dir, run_dir)
        results = both_views(run_dir)
        record = {"kind": "baseline", "dataset": name, "model": "repeat", "label": "repeat", "seed": args.seed,
                  "data": str(data_dir), "run_dir": str(run_dir), "config": read_config(run_dir).to_dict(),
                  "results": results, "recall_parts": recall_parts(run_dir), "commit": commit(), "machine": machine(),
                  "wall_s": round(time.perf_counter() - start, 2), "command": " ".join(sys.argv)}
        print(f"wrote {write_record(tag, record)}")


def cmd_channel(args) -> None:
    import torch

    from dmirec.evaluation.repeat_fit import fit_repeat_run
    from dmirec.runs.rundir import read_config, read_data_ref

    torch.set_num_threads(1)
    for source in map(Path, args.runs):
        start = time.perf_counter()
        run_dir = with_settings(readable(source), args.set)
        cfg = read_config(run_dir)
        dataset = read_data_ref(run_dir)["name"]
        label = args.label or cfg.model
        tag = f"{dataset}-{label}-s{cfg.seed}"
        RESULTS.mkdir(parents=True, exist_ok=True)
        params = RESULTS / f"{tag}.repeat.json"
        fit = fit_repeat_run(run_dir, params)  # validation users only
        model = both_views(run_dir, repeat_channel=False)
        channel = both_views(run_dir, repeat_params=params)
        record = {"kind": "channel", "dataset": dataset, "model": cfg.model, "label": label, "seed": cfg.seed,
                  "run_dir": str(source.resolve()), "read_from": str(run_dir.resolve()),
                  "config": cfg.to_dict(), "repeat_params": fit["params"],
                  "fit": {k: fit[k] for k in ("chosen", "model", "users", "metric", "seconds")},
                  "results": model, "results_with_channel": channel,
                  "recall_parts": recall_parts(run_dir, repeat_channel=False),
                  "recall_parts_with_channel": recall_parts(run_dir, repeat_params=params),
                  "commit": commit(), "machine": machine(),
                  "wall_s": round(time.perf_counter() - start, 2), "command": " ".join(sys.argv)}
        print(f"wrote {write_record(tag, record)} (parameters: {params})")


def cmd_stats(args) -> None:
    """How many evaluation targets repeat a history item, per dataset and split."""
    from dmirec.data.dataset import load_dataset
    from dmirec.data.sampler import eval_split
    from dmirec.evaluation.metrics import drop_seen_targets

    for data_dir in map(Path, args.data):
        start = time.perf_counter()
        data = load_dataset(data_dir)
        out = {}
        for split in SPLITS:
            ev = eval_split(data.splits[split], 20)  # the cut does not depend on seq_len
            kept, keep = drop_seen_targets(ev.targets, ev.full_history)
            total, new = sum(len(t) for t in ev.targets), sum(len(k) for k in kept)
            out[split] = {"users": len(ev.targets), "targets": total, "repeat_targets": total - new,
                          "repeat_share": (total - new) / total,
                          "users_with_a_repeat_target": int(sum(len(k) < len(t) for k, t in zip(kept, ev.targets))),
                          "users_only_repeat_targets": int((~keep).sum())}
        record = {"kind": "stats", "dataset": data.name, "data": str(data_dir), "targets": out, "commit": commit(),
                  "machine": machine(), "wall_s": round(time.perf_counter() - start, 2), "command": " ".join(sys.argv)}
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{data.name}.stats.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")


def fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def mean_sd(values: list[float]) -> str:
    import statistics

    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


NAMES = {"repeat": "repeat baseline", "remi": "REMI", "dmi": "DMI", "most-popular": "most-popular",
         "remi-rule": "REMI + neighbour rule", "dmi-collab": "DMI, collaborative", "sasrec": "SASRec"}


def variants(r: dict) -> list[tuple[str, dict, dict | None]]:
    """(label, results, recall parts) of a record: the model, and the model + channel when measured."""
    name = NAMES.get(r["label"], r["label"])
    out = [(name, r["results"], r.get("recall_parts"))]
    if "results_with_channel" in r:
        out.append((f"{name} + repeat channel", r["results_with_channel"], r.get("recall_parts_with_channel")))
    return out


def print_stats(stats: list[dict]) -> None:
    print("| dataset | split | users | targets | targets already in the history | users with one "
          "| users with only such |")
    print("|---|---|---|---|---|---|---|")
    for r in stats:
        for split, t in r["targets"].items():
            print(f"| {r['dataset']} | {split} | {t['users']} | {t['targets']} | {t['repeat_targets']} "
                  f"({t['repeat_share']:.0%}) | {t['users_with_a_repeat_target']} | {t['users_only_repeat_targets']} |")
    print()


def print_summary(records: list[dict]) -> None:
    """Test users, mean ± sd over seeds; the share of R@50 from repeat hits; validation R@50."""
    groups: dict[tuple[str, str], list[tuple[dict, dict | None]]] = {}
    for r in sorted(records, key=lambda r: (r["dataset"], r["label"], r["seed"])):
        for label, res, parts in variants(r):
            groups.setdefault((r["dataset"], label), []).append((res, parts))
    print("| dataset | model | seeds | view | R@20 | R@50 | NDCG@50 | R@50 from repeat hits | valid R@50 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for view, _ in VIEWS:
        for (dataset, label), rows in groups.items():
            test = [res["test"][view] for res, _ in rows]
            valid = [res["valid"][view]["recall@50"] for res, _ in rows]
            share = "-"
            if view == "published" and all(p for _, p in rows):
                share = mean_sd([p["test"]["recall@50_from_repeats"] for _, p in rows])
            print(f"| {dataset} | {label} | {len(rows)} | {view.replace('_', '-')} | "
                  f"{mean_sd([m['recall@20'] for m in test])} | {mean_sd([m['recall@50'] for m in test])} | "
                  f"{mean_sd([m['ndcg@50'] for m in test])} | {share} | {mean_sd(valid)} |")
    print()


def print_details(records: list[dict]) -> None:
    print("| dataset | model | seed | split | view | R@20 | R@50 | HR@50 | NDCG@50 | users (skipped) |")
    print("|" + "---|" * 10)
    for split in SPLITS:
        for view, _ in VIEWS:
            for r in sorted(records, key=lambda r: (r["dataset"], r["label"], r["seed"])):
                for label, res, _ in variants(r):
                    if label.endswith("channel"):
                        p = r["repeat_params"]
                        label += f" (w={p['repeat_weight']}, rec={p['repeat_recency']}, bias={p['repeat_bias']})"
                    m = res[split][view]
                    users = f"{m['users']}" + (f" ({m['skipped_users']})" if "skipped_users" in m else "")
                    print(f"| {r['dataset']} | {label} | {r['seed']} | {split} | {view.replace('_', '-')} | "
                          f"{fmt(m['recall@20'])} | {fmt(m['recall@50'])} | {fmt(m['hitrate@50'])} | "
                          f"{fmt(m['ndcg@50'])} | {users} |")
    print()


def print_gains(records: list[dict]) -> None:
    gains = [r for r in records if "results_with_channel" in r]
    if not gains:
        return
    print("| dataset | model | seed | valid R@50: model, + channel | test R@50: model, + channel | test ratio |")
    print("|---|---|---|---|---|---|")
    for r in sorted(gains, key=lambda r: (r["dataset"], r["label"], r["seed"])):
        (v0, t0), (v1, t1) = [(res["valid"]["published"]["recall@50"], res["test"]["published"]["recall@50"])
                              for res in (r["results"], r["results_with_channel"])]
        name = NAMES.get(r["label"], r["label"])
        print(f"| {r['dataset']} | {name} | {r['seed']} | {v0:.4f}, {v1:.4f} | {t0:.4f}, {t1:.4f} | "
              f"{t1 / t0:.3f} |")
    print()


def print_parts(records: list[dict]) -> None:
    print("| dataset | model | seed | test R@20 | from repeat hits | test R@50 | from repeat hits "
          "| history items in the top 50 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(records, key=lambda r: (r["dataset"], r["label"], r["seed"])):
        for label, _, p in variants(r):
            if not p:
                continue
            p = p["test"]
            r20, r50 = p["recall@20_from_repeats"], p["recall@50_from_repeats"]
            print(f"| {r['dataset']} | {label} | {r['seed']} | {p['recall@20']:.4f} | {r20:.4f} "
                  f"({r20 / max(p['recall@20'], 1e-12):.0%}) | {p['recall@50']:.4f} | {r50:.4f} "
                  f"({r50 / max(p['recall@50'], 1e-12):.0%}) | {p['history_slots@50']:.1f} |")


def cmd_report(args) -> None:
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))
               if not p.name.endswith((".repeat.json", ".stats.json"))]
    stats = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.stats.json"))]
    if stats:
        print_stats(stats)
    if records:
        print_summary(records)
        print_gains(records)
        print_details(records)
        print_parts(records)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("baseline", help="the repeat baseline on prepared datasets")
    b.add_argument("data", nargs="+", help="prepared dataset folders (dmirec prepare)")
    b.add_argument("--seed", type=int, default=2021)
    b.add_argument("--decay", type=float, default=0.0, help="repeat_decay (0 = plain counts)")
    c = sub.add_parser("channel", help="fit the repeat channel of finished runs and evaluate with and without it")
    c.add_argument("runs", nargs="+", help="finished run directories (read only)")
    c.add_argument("--label", default=None, help="model label in the record name (default: the run's model)")
    c.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="evaluation-time settings for the run (e.g. neighbour_alpha=0.5 neighbours=16)")
    st = sub.add_parser("stats", help="share of evaluation targets that repeat a history item")
    st.add_argument("data", nargs="+", help="prepared dataset folders")
    sub.add_parser("report", help="markdown tables of bench_results/repeat/")
    args = p.parse_args(argv)
    {"baseline": cmd_baseline, "channel": cmd_channel, "stats": cmd_stats, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
