#!/usr/bin/env python
"""Benchmark of the classical item-to-item channels (ItemKNN, EASE, RP3beta) on the real splits,
and their cost on synthetic catalogues.

    python scripts/bench_classical.py run [--datasets beauty sports gowalla] [--methods itemknn ease rp3beta]
    python scripts/bench_classical.py cost [--cases knn-12k knn-300k knn-1m ease-12k ease-refuse]
    python scripts/bench_classical.py table          # Markdown tables of the records (docs/classical.md)

``run`` prepares ../shared/datasets/NAME/interactions.csv into bench_data/NAME the way
scripts/bench.py does (skipped when it exists) and, for each (dataset, method), starts one fresh
subprocess with one thread (OMP/OpenBLAS/MKL) that writes bench_results/classical/DATASET-METHOD.json.
``cost`` measures one fit per fresh subprocess and writes bench_results/classical/cost-CASE.json.

Protocol. Fit on the training users only (binary users x items matrix of every training
interaction). Validation and test users are split as the project does
(:func:`dmirec.data.sampler.eval_split`): the history is the first int(0.8 * len) items and the
targets the rest. Item-based methods use the user's WHOLE history (``full_history``), not only
the last seq_len items the neural models see. Each list is the method's top 50 (positive scores
only), filled with the most popular training items (interaction counts) not already in the list
(nor excluded); metrics are :func:`dmirec.evaluation.metrics.summarize` at 20 and 50 plus catalogue coverage.

Views. Every dataset is evaluated in the published view (targets as they are, repeats of history
items count; whether history items are excluded from the list is a selected setting). On
gowalla (repeat consumption) the new-items view is evaluated too (:func:`dmirec.evaluation.evaluate.new_items_view`:
targets already in the history removed, users left without a target skipped, history always
excluded), with its own selection on validation users.

Grids and selection rule (fixed before running). For each method the fit grid is

* itemknn: shrink in {0, 10, 50, 100, 200} x topk in {50, 200}
* ease:    lam in {50, 200, 500, 1000, 3000} (dense B)
* rp3beta: alpha in {0.5, 1.0} x beta in {0.0, 0.25, 0.5} x topk in {50, 200}

and every fit is scored with history decay in {0, 0.1} (weight exp(-decay * age) per history
occurrence) x exclude-history in {False, True} (published view; always True in the new-items
view). The chosen setting is the one with the best VALIDATION Recall@50; settings within 1e-4 of
the best count as tied and the tie goes to the earliest in grid order, where the order puts
decay 0 before 0.1, no exclusion before exclusion, then the fit grid in the order listed above
(smaller topk, smaller shrink / lam, smaller alpha / beta first). Test metrics are reported for
the chosen setting only. For EASE the sparse approximation (top-k entries per column by |B|,
k in {100, 200, 500}) of the chosen dense B is scored on validation users with the chosen
decay/exclusion, to measure what a bundle-sized EASE costs in recall.

Wall times depend on what else runs on the machine: records carry the 1/5/15-minute load
averages at the start and end of the measuring process. Records hold the chosen setting, the
whole validation grid, the test metrics, fit seconds (of every grid fit; the chosen setting's is
its grid fit's), the peak RSS of the subprocess (data, all fits and evaluations of the grid),
commit, data fingerprint, machine and command line.

Cost cases (synthetic logs from :mod:`dmirec.data.synth_log`, every user of the log in the
training matrix; sizes in COST_CASES): fit time and peak RSS of ItemKNN (shrink 0, topk 200,
block 4096) at 12k, 300k and 1M items, EASE (lam 200) at 12k items, and EASE's refusal above
max_items (default 50,000) on the 300k-item log.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import DATA, ROOT, data_fingerprint, git_commit, machine, prepared  # noqa: E402

OUT = ROOT / "bench_results" / "classical"
DATASETS = ("beauty", "sports", "gowalla")
NEW_ITEMS_VIEW = {"gowalla"}
METHODS = ("itemknn", "ease", "rp3beta")
NS = (20, 50)
N = max(NS)
TIE = 1e-4
DECAYS = (0.0, 0.1)
EASE_TOPKS = (100, 200, 500)
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def fit_grid(method: str) -> list[dict]:
    """The fit settings of a method, in selection (tie-break) order."""
    if method == "itemknn":
        return [{"shrink": s, "topk": k} for k in (50, 200) for s in (0.0, 10.0, 50.0, 100.0, 200.0)]
    if method == "ease":
        return [{"lam": lam} for lam in (50.0, 200.0, 500.0, 1000.0, 3000.0)]
    if method == "rp3beta":
        return [{"alpha": a, "beta": b, "topk": k} for k in (50, 200) for a in (0.5, 1.0) for b in (0.0, 0.25, 0.5)]
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def fit(method: str, train, setting: dict):
    from dmirec.channels.ease import fit_ease
    from dmirec.channels.itemknn import fit_itemknn
    from dmirec.channels.rp3beta import fit_rp3beta

    fn = {"itemknn": fit_itemknn, "ease": fit_ease, "rp3beta": fit_rp3beta}[method]
    return fn(train, **setting)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class View:
    """One evaluation population (a split in one view): user rows per decay, exclusions, targets."""

    def __init__(self, eval_set, num_items: int, popularity: np.ndarray, forced_exclude: bool | None):
        from dmirec.channels.interactions import user_item_matrix

        self.histories = eval_set.full_history
        self.targets = eval_set.targets
        self.num_items = num_items
        self.popularity = popularity
        self.forced_exclude = forced_exclude
        self.rows = {d: user_item_matrix(self.histories, num_items, decay=d) for d in DECAYS}

    def excludes(self) -> tuple[bool, ...]:
        return (self.forced_exclude,) if self.forced_exclude is not None else (False, True)

    def score(self, sim, decay: float, exclude: bool) -> dict:
        from dmirec.channels.scoring import fill_popular, top_items
        from dmirec.evaluation.metrics import catalogue_coverage, summarize

        excl = self.histories if exclude else None
        ids, _ = top_items(self.rows[decay], sim, N, exclude=excl)
        scored = float((ids >= 0).mean())  # share of slots the method itself filled
        ids = fill_popular(ids, self.popularity, excl)
        metrics = summarize(ids, self.targets, NS)
        for n in NS:
            metrics[f"coverage@{n}"] = catalogue_coverage(ids, self.num_items, n)
        metrics["method_filled_share"] = scored
        return metrics


def views(data, split: str, with_new_items: bool) -> dict[str, View]:
    from dmirec.data.sampler import eval_split
    from dmirec.evaluation.evaluate import new_items_view

    pop = data.item_popularity("train")
    full = eval_split(data.splits[split], 20)
    out = {"published": View(full, data.num_items, pop, None)}
    if with_new_items:
        view, skipped = new_items_view(full)
        out["new_items"] = View(view, data.num_items, pop, True)
        out["new_items"].skipped = skipped
    return out


def choose(entries: list[dict]) -> dict:
    """The selection rule: the earliest entry (tie-break order) within TIE of the best valid Recall@50."""
    top = max(e["valid"]["recall@50"] for e in entries)
    return min((e for e in entries if e["valid"]["recall@50"] >= top - TIE), key=lambda e: e["order"])


def short(m: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()}


def run_one(dataset: str, method: str, data_dir: Path, argv: list[str]) -> dict:
    """Grid on validation users, test of the chosen setting; returns the record."""
    import dmirec.retrieval.exact  # noqa: F401  (torch, used by exclusions: in the baseline RSS)
    from dmirec.channels.ease import column_topk
    from dmirec.channels.interactions import train_matrix
    from dmirec.data.dataset import load_dataset

    load_start = os.getloadavg()
    data = load_dataset(data_dir)
    train = train_matrix(data)  # (U_train, N + 1) binary
    with_new = dataset in NEW_ITEMS_VIEW
    valid = views(data, "valid", with_new)
    rss_base = peak_rss_mib()
    grid, fits = [], []
    kept: dict[int, object] = {}
    fit_settings = fit_grid(method)
    for f_idx, setting in enumerate(fit_settings):
        t0 = time.perf_counter()
        sim = fit(method, train, setting)
        secs = time.perf_counter() - t0
        nnz = int(sim.nnz) if hasattr(sim, "nnz") else int(np.count_nonzero(sim))
        fits.append({"setting": setting, "fit_seconds": round(secs, 3), "nnz": nnz})
        print(f"[{dataset}/{method}] fit {setting} {secs:.1f}s nnz={nnz}", file=sys.stderr, flush=True)
        for name, view in valid.items():
            for decay in DECAYS:
                for exclude in view.excludes():
                    m = view.score(sim, decay, exclude)
                    grid.append({"view": name, **setting, "decay": decay, "exclude_history": exclude,
                                 "order": (DECAYS.index(decay), int(exclude), f_idx), "valid": short(m)})
        # keep the fits that are some view's choice so far (usually the final one: no refit needed)
        current = {choose([e for e in grid if e["view"] == name])["order"][2] for name in valid}
        kept = {i: m for i, m in kept.items() if i in current}
        if f_idx in current:
            kept[f_idx] = sim
        del sim
    best = {name: choose([e for e in grid if e["view"] == name]) for name in valid}
    test = views(data, "test", with_new)
    record = {"dataset": dataset, "method": method, "threads": 1, "users_history": "full history before the cut",
              "list_fill": "most popular training items not in the list (nor excluded)",
              "selection": "best valid recall@50; within 1e-4 ties go to the earliest in grid order "
                           "(decay 0, no exclusion, then the fit grid order)",
              "views": {}, "fits": fits, "rss_after_data_mib": round(rss_base, 1)}
    for name, view in test.items():
        chosen = best[name]
        f_idx = chosen["order"][2]
        setting = fit_settings[f_idx]
        if f_idx in kept:  # the grid's fit of this setting, and its time
            sim, secs = kept[f_idx], fits[f_idx]["fit_seconds"]
        else:  # chosen only once later fits had changed the tie-break: fit it again
            t0 = time.perf_counter()
            sim = fit(method, train, setting)
            secs = time.perf_counter() - t0
        decay, exclude = chosen["decay"], chosen["exclude_history"]
        test_m = view.score(sim, decay, exclude)
        out = {"chosen": {**setting, "decay": decay, "exclude_history": exclude},
               "valid": chosen["valid"], "test": short(test_m), "fit_seconds": round(secs, 3),
               "valid_grid": [{k: v for k, v in e.items() if k not in ("view", "order")}
                              for e in grid if e["view"] == name]}
        if hasattr(view, "skipped"):
            out["skipped_test_users"] = view.skipped
            out["skipped_valid_users"] = valid[name].skipped
        if method == "ease":
            sparse = []
            for k in EASE_TOPKS:
                t0 = time.perf_counter()
                cut = column_topk(sim, k)
                cut_secs = time.perf_counter() - t0
                m = valid[name].score(cut, decay, exclude)
                sparse.append({"topk": k, "nnz": int(cut.nnz), "sparsify_seconds": round(cut_secs, 3),
                               "valid": short(m)})
            out["sparse_topk_valid"] = sparse
        record["views"][name] = out
        del sim
    record["peak_rss_mib"] = round(peak_rss_mib(), 1)
    record["load_average"] = {"start": [round(x, 2) for x in load_start],
                              "end": [round(x, 2) for x in os.getloadavg()]}
    return record


def child_env() -> dict:
    env = dict(os.environ, **THREAD_ENV)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cmd_run(args) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        data_dir = Path(args.data_root) / dataset if args.data_root else prepared(dataset)
        for method in args.methods:
            out = OUT / f"{dataset}-{method}.json"
            if out.exists() and not args.force:
                print(f"[skip] {out} exists (--force to redo)")
                continue
            cmd = [sys.executable, __file__, "_one", dataset, method, str(data_dir)]
            commit = git_commit()  # the code the child runs: taken before it starts
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=child_env(), stdout=subprocess.PIPE, text=True)  # progress: stderr
            if proc.returncode != 0:
                sys.exit(f"{dataset}/{method} failed (exit {proc.returncode}); its messages are above")
            record = json.loads(proc.stdout.strip().splitlines()[-1])
            record.update({"wall_seconds": round(time.perf_counter() - t0, 1), "commit": commit,
                           "data": str(data_dir), "data_fingerprint": data_fingerprint(data_dir),
                           "machine": machine(), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])})
            out.write_text(json.dumps(record, indent=1) + "\n")
            for name, v in record["views"].items():
                print(f"{dataset}/{method} [{name}] chosen {v['chosen']} valid R@50 {v['valid']['recall@50']:.4f} "
                      f"test R@50 {v['test']['recall@50']:.4f} N@50 {v['test']['ndcg@50']:.4f}", flush=True)


# ---------------------------------------------------------------- cost

COST_CASES = {
    # users x median length ~ interactions; 12k items at beauty/gowalla scale, 300k and 1M sparse
    "knn-12k": {"method": "itemknn", "items": 12_000, "users": 20_000, "clusters": 200},
    "knn-300k": {"method": "itemknn", "items": 300_000, "users": 150_000, "clusters": 3000},
    "knn-1m": {"method": "itemknn", "items": 1_000_000, "users": 250_000, "clusters": 10_000},
    "ease-12k": {"method": "ease", "items": 12_000, "users": 20_000, "clusters": 200},
    "ease-refuse": {"method": "ease", "items": 300_000, "users": 150_000, "clusters": 3000},
}
COST_SETTINGS = {"itemknn": {"shrink": 0.0, "topk": 200, "block": 4096}, "ease": {"lam": 200.0}}


def synthetic_train(case: dict):
    from dmirec.channels.interactions import sequences_matrix
    from dmirec.data.dataset import Sequences
    from dmirec.data.synth_log import chunks, spec_from

    spec = spec_from(None, users=case["users"], items=case["items"], clusters=case["clusters"], seed=0)
    offs, items = [np.zeros(1, dtype=np.int64)], []
    total = 0
    for _, offsets, its, _ in chunks(spec):
        offs.append(offsets[1:] + total)
        items.append(its.astype(np.int32))
        total += len(its)
    offsets = np.concatenate(offs)
    seqs = Sequences(offsets=offsets, items=np.concatenate(items), users=np.arange(len(offsets) - 1),
                     timestamps=np.zeros(total, dtype=np.int64))
    return sequences_matrix(seqs, case["items"]), spec


def cost_one(name: str) -> dict:
    import dataclasses

    case = COST_CASES[name]
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    train, spec = synthetic_train(case)
    gen_secs = time.perf_counter() - t0
    rss_data = peak_rss_mib()
    method = case["method"]
    setting = COST_SETTINGS[method]
    record = {"case": name, "method": method, "setting": setting, "threads": 1, "log": dataclasses.asdict(spec),
              "train_users": int(train.shape[0]), "items": int(train.shape[1] - 1),
              "items_with_interactions": int((np.diff(train.tocsc().indptr) > 0).sum()),
              "train_nnz": int(train.nnz), "generate_seconds": round(gen_secs, 2),
              "rss_after_data_mib": round(rss_data, 1)}
    t0 = time.perf_counter()
    try:
        sim = fit(method, train, setting)
        record["fit_seconds"] = round(time.perf_counter() - t0, 2)
        record["result_nnz"] = int(sim.nnz) if hasattr(sim, "nnz") else int(sim.size)
        record["result_mib"] = round((sim.data.nbytes + sim.indices.nbytes + sim.indptr.nbytes if hasattr(sim, "nnz")
                                      else sim.nbytes) / 2**20, 1)
    except ValueError as err:
        record["refused"] = str(err)
        record["refuse_seconds"] = round(time.perf_counter() - t0, 4)
    record["peak_rss_mib"] = round(peak_rss_mib(), 1)
    record["load_average"] = {"start": [round(x, 2) for x in load_start],
                              "end": [round(x, 2) for x in os.getloadavg()]}
    return record


def cmd_cost(args) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        if name not in COST_CASES:
            sys.exit(f"unknown cost case {name!r}; choose from {sorted(COST_CASES)}")
        out = OUT / f"cost-{name}.json"
        cmd = [sys.executable, __file__, "_cost", name]
        commit = git_commit()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            record = {"case": name, **COST_CASES[name], "failed": True, "returncode": proc.returncode,
                      "stderr_tail": proc.stderr[-2000:]}
        else:
            record = json.loads(proc.stdout.strip().splitlines()[-1])
        record.update({"wall_seconds": round(time.perf_counter() - t0, 1), "commit": commit,
                       "machine": machine(), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])})
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps({k: record.get(k) for k in ("case", "items", "train_nnz", "fit_seconds", "peak_rss_mib",
                                                     "refused", "failed")}), flush=True)


def _fmt_setting(chosen: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())


def cmd_table(args) -> None:
    """Print the measured tables from bench_results/classical/*.json."""
    print("| dataset | view | method | chosen setting | valid R@50 | valid N@50 | test R@20 | test R@50 "
          "| test N@50 | test HR@50 | fit s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dataset in DATASETS:
        for view in ("published", "new_items"):
            for method in METHODS:
                path = OUT / f"{dataset}-{method}.json"
                if not path.exists():
                    continue
                rec = json.loads(path.read_text())
                v = rec["views"].get(view)
                if v is None:
                    continue
                t = v["test"]
                print(f"| {dataset} | {view} | {method} | {_fmt_setting(v['chosen'])} | {v['valid']['recall@50']:.4f} "
                      f"| {v['valid']['ndcg@50']:.4f} | {t['recall@20']:.4f} | {t['recall@50']:.4f} "
                      f"| {t['ndcg@50']:.4f} | {t['hitrate@50']:.4f} | {v['fit_seconds']:.1f} | {rec['peak_rss_mib']:.0f} |")
    print()
    print("| dataset | view | EASE columns kept | nnz | valid R@50 | valid N@50 |")
    print("|---|---|---|---|---|---|")
    for dataset in DATASETS:
        path = OUT / f"{dataset}-ease.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        for view, v in rec["views"].items():
            dense_nnz = next(f["nnz"] for f in rec["fits"] if f["setting"]["lam"] == v["chosen"]["lam"])
            print(f"| {dataset} | {view} | dense | {dense_nnz} | {v['valid']['recall@50']:.4f} "
                  f"| {v['valid']['ndcg@50']:.4f} |")
            for sp_ in v.get("sparse_topk_valid", []):
                print(f"| {dataset} | {view} | top {sp_['topk']} | {sp_['nnz']} | {sp_['valid']['recall@50']:.4f} "
                      f"| {sp_['valid']['ndcg@50']:.4f} |")
    print()
    print("| case | method | items | training users | user-item pairs | fit s | peak RSS MiB | result |")
    print("|---|---|---|---|---|---|---|---|")
    for name in COST_CASES:
        path = OUT / f"cost-{name}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        if rec.get("failed"):
            result = f"failed (exit {rec['returncode']})"
        elif rec.get("refused"):
            result = "refused: " + rec["refused"]
        else:
            result = f"{rec['result_nnz']} entries, {rec['result_mib']} MiB"
        print(f"| {name} | {rec['method']} | {rec['items']} | {rec.get('train_users', '')} | {rec.get('train_nnz', '')} "
              f"| {rec.get('fit_seconds', '-')} | {rec.get('peak_rss_mib', '-')} | {result} |")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_one"]:  # internal: one (dataset, method) in this fresh process
        dataset, method, data_dir = argv[1], argv[2], Path(argv[3])
        print(json.dumps(run_one(dataset, method, data_dir, argv)))
        return
    if argv[:1] == ["_cost"]:  # internal: one cost case in this fresh process
        print(json.dumps(cost_one(argv[1])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="grid on validation users, test of the chosen setting")
    r.add_argument("--datasets", nargs="+", default=list(DATASETS))
    r.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    r.add_argument("--data-root", default=None,
                   help=f"folder holding prepared NAME/ folders (default: prepare into {DATA})")
    r.add_argument("--force", action="store_true", help="redo records that exist")
    c = sub.add_parser("cost", help="fit time and peak RSS on synthetic catalogues")
    c.add_argument("--cases", nargs="+", default=list(COST_CASES))
    sub.add_parser("table", help="Markdown tables of the records")
    args = ap.parse_args(argv)
    {"run": cmd_run, "cost": cmd_cost, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
