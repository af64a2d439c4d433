"""``dmirec report RUN_DIR``: one self-contained HTML page (and PNG files) about a trained run.

Sections: training curves (best step marked), the metrics table (valid at the best step, test),
the resolved config, the data, the machine, per-interest diagnostics on a seeded sample of test
users (:mod:`dmirec.evaluation.diagnostics`), categories when a category file is given, what the refiner
changed for DMI, the index recall stored in a bundle, and how many hits are repeats. The figures
are drawn with matplotlib (Agg backend; the ``report`` extra) and embedded as base64 PNGs, so the
file opens offline; the same PNGs are written beside it.

:func:`analyse_run` computes every number (no plotting); :func:`make_figures` draws them and
:func:`render_html` writes the page.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import diagnostics as dg
from ..runs import rundir
from ..data.sampler import eval_split
from .evaluate import evaluate_run, load_run, metric_cutoffs
from .metrics import hit_matrix, summarize
from ..retrieval import search

SECTIONS = ("training", "metrics", "config", "data", "machine", "interests", "examples", "categories",
            "refinement", "repeats", "index")


# ---- numbers ----------------------------------------------------------------------------------
def _machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


@torch.no_grad()
def _vectors(model, history: np.ndarray, mask: np.ndarray, is_dmi: bool, batch: int = 512) -> dict[str, np.ndarray]:
    """The served query vectors of a set of users (``user``, as evaluation uses them), in batches;
    for DMI also the backbone's ``coarse`` interests and the ``refined`` ones (``refine()``'s output,
    or the generated vectors when they are extra queries rather than fused)."""
    parts: dict[str, list[np.ndarray]] = {"user": [], "coarse": [], "refined": []}
    for s in range(0, len(history), batch):
        h = torch.from_numpy(history[s:s + batch])  # (b, L)
        m = torch.from_numpy(mask[s:s + batch])  # (b, L)
        parts["user"].append(model.user_vectors(h, m).float().numpy())  # (b, K or 2K, D)
        if is_dmi:
            out = model.refine(h, m)
            coarse = out["coarse"]  # (b, K, D)
            refined = out["user"] if out["user"].shape == coarse.shape else out["v0_hat"]  # (b, K, D)
            parts["coarse"].append(coarse.float().numpy())
            parts["refined"].append(refined.float().numpy())
    return {k: np.concatenate(v) for k, v in parts.items() if v}


def _finite_mean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def analyse_run(run_dir: str | Path, categories: str | Path | None = None, category_ids: str = "auto",
                users: int = 1000, seed: int = 0, n: int = 50, list_n: int = 20, examples: int = 3,
                bundle: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every number of the report for ``run_dir`` (best checkpoint, test users). ``overrides``:
    evaluation-time config changes (e.g. the neighbour rule), as ``dmirec evaluate`` takes them;
    the test metrics are then measured with them."""
    run_dir = Path(run_dir)
    cfg = rundir.read_config(run_dir)
    ref = rundir.read_data_ref(run_dir)
    rows = rundir.read_metrics(run_dir)
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    model, run_cfg, data = load_run(run_dir, "best", "cpu", overrides)  # builds the interest bank if one is read
    if overrides:
        cfg = run_cfg
    is_dmi = cfg.model == "dmi" and hasattr(model, "refine")

    out: dict[str, Any] = {"run_dir": str(run_dir), "model": cfg.model, "config": cfg.to_dict(), "data_ref": ref,
                           "meta": data.meta, "machine": _machine(), "rows": rows, "result": result,
                           "is_dmi": is_dmi, "n": n, "list_n": list_n, "seed": seed}
    valid_rows = [r for r in rows if r.get("split") == "valid"]
    best_step = result["best_step"] if result else (valid_rows[-1]["best_step"] if valid_rows else None)
    out["best_step"] = best_step
    out["valid_best"] = next((r for r in valid_rows if r["step"] == best_step), None)
    out["test"] = result["test"] if result else next((r for r in rows if r.get("split") == "test"), None)
    if overrides:  # the recipe that is served: measured with its settings, not read from result.json
        out["test"] = evaluate_run(run_dir, split="test", overrides=overrides)
        out["overrides"] = dict(overrides)

    # sample of test users
    ev = eval_split(data.splits["test"], cfg.seq_len)
    total = len(ev.history)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, size=min(users, total), replace=False)) if users and users < total \
        else np.arange(total)
    hist, mask = ev.history[pick], ev.mask[pick]
    targets = [ev.targets[i] for i in pick]
    full_hist = [ev.full_history[i] for i in pick]
    vecs = _vectors(model, hist, mask, is_dmi)
    user = vecs["user"]  # (S, K, D)
    items = model.item_embeddings().detach().float().numpy()  # (N + 1, D)
    k = user.shape[1]
    width = max(max(metric_cutoffs(cfg)), n)
    exclude = full_hist if cfg.exclude_history else None
    res = search(user, items, width, exclude=exclude)
    hits = hit_matrix(res.ids, targets)  # (S, width)
    out["sample"] = {"users": int(len(pick)), "of": int(total), "seed": seed,
                     "metrics": summarize(res.ids, targets, (20, n) if n != 20 else (20,))}
    out["num_interests"] = k
    out["argmax_share"] = dg.argmax_share(user, items, targets)
    out["slot_share"] = dg.slot_share(res.interest[:, :n], k)
    out["diversity"] = dg.interest_diversity(user)
    per_interest = dg.top_items(user, items, list_n)  # (S, K, list_n)

    # categories
    cats, cat_info = None, None
    if categories:
        cats, cat_info = dg.read_categories(categories, data.item_ids, category_ids)
        out["category_info"] = cat_info
        out["category_diversity"] = dg.category_diversity(res.ids[:, :n], cats)
        out["category_purity"] = dg.category_purity(per_interest, cats)  # (S, K)
    out["categories"] = cats is not None

    # example users: the first few of the sample
    names = data.item_ids
    cat_names = cat_info["categories"] if cat_info else None

    def label(i: int) -> str:
        raw = names[i - 1] if 1 <= i <= len(names) else str(i)
        if cats is not None and cats[i] >= 0:
            raw += f" [{cat_names[cats[i]]}]"
        return raw

    ex = []
    for r in range(min(examples, len(pick))):
        tset = set(np.asarray(targets[r]).tolist())
        ex.append({"user": int(ev.users[pick[r]]),
                   "history": [label(int(i)) for i in hist[r][mask[r]][-10:]],
                   "targets": [label(int(i)) for i in list(dict.fromkeys(np.asarray(targets[r]).tolist()))[:10]],
                   "interests": [[(label(int(i)), int(i) in tset) for i in per_interest[r, j, :10]] for j in range(k)]})
    out["examples"] = ex

    # DMI: refined against coarse
    if is_dmi:
        coarse = vecs["coarse"]
        res_c = search(coarse, items, width, exclude=exclude)
        hits_c = hit_matrix(res_c.ids, targets)
        refined = vecs["refined"]
        out["refine"] = {
            "shift": dg.refinement_shift(coarse, refined),
            "profile": dg.dimension_profile(coarse, refined),
            "overlap": dg.list_overlap(res.ids, res_c.ids, n),
            "gained_lost": dg.hits_gained_lost(hits, hits_c, res.ids, res_c.ids, n),
            "coarse_metrics": summarize(res_c.ids, targets, (20, n) if n != 20 else (20,)),
            "fusion_weight": cfg.fusion_weight, "output": getattr(cfg, "dmi_output", "fuse"),
        }

    # repeats
    out["repeats"] = {c: dg.repeat_hits(res.ids, hits, full_hist, c) for c in sorted({20, n})}

    # bundle index
    if bundle:
        manifest_path = Path(bundle) / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{bundle}: not a bundle (no manifest.json)")
        out["index"] = json.loads(manifest_path.read_text()).get("index")
        out["bundle"] = str(bundle)
    return out


# ---- figures ----------------------------------------------------------------------------------
def _plt():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("dmirec report needs matplotlib: pip install 'dmirec[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def make_figures(a: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes of every figure, by file stem."""
    plt = _plt()
    figs: dict[str, bytes] = {}
    valid = [r for r in a["rows"] if r.get("split") == "valid"]
    if valid:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
        steps = [r["step"] for r in valid]
        ax1.plot(steps, [r.get("loss") for r in valid], marker="o", color="tab:red")
        ax1.set(xlabel="step", ylabel="training loss (mean since last validation)", title="loss")
        for key, style in (("recall@20", "-o"), ("recall@50", "-o"), ("ndcg@50", "--s")):
            if key in valid[0]:
                ax2.plot(steps, [r[key] for r in valid], style, label=f"valid {key}")
        ax2.set(xlabel="step", title="validation metrics")
        for ax in (ax1, ax2):
            if a["best_step"] is not None:
                ax.axvline(a["best_step"], color="gray", linestyle=":", label=f"best step {a['best_step']}")
        ax2.legend(fontsize=8)
        figs["curves"] = _png(fig)

    k = a["num_interests"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    x = np.arange(k)
    ax1.bar(x - 0.2, a["argmax_share"], 0.4, label="argmax vs target")
    ax1.bar(x + 0.2, a["slot_share"], 0.4, label=f"slots of the top {a['n']}")
    ax1.set(xticks=x, xlabel="interest", ylabel="share", title="how often each interest is used")
    ax1.legend(fontsize=8)
    div = a["diversity"][np.isfinite(a["diversity"])]
    if div.size:
        ax2.hist(div, bins=30, color="tab:green")
        ax2.set(xlabel="mean pairwise 1 - cos of a user's interests", ylabel="users", title="interest diversity")
    else:
        ax2.text(0.5, 0.5, "K = 1: no pairs of interests", ha="center", va="center")
        ax2.set_axis_off()
    figs["interests"] = _png(fig)

    if a["categories"]:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
        pur = a["category_purity"]
        means = [_finite_mean(pur[:, j]) or 0.0 for j in range(k)]
        ax1.bar(x, means, color="tab:purple")
        ax1.set(xticks=x, ylim=(0, 1), xlabel="interest", ylabel="mean purity",
                title=f"category purity of each interest's top {a['list_n']}")
        cd = a["category_diversity"][np.isfinite(a["category_diversity"])]
        ax2.hist(cd, bins=30, color="tab:olive")
        ax2.set(xlabel=f"category diversity of the merged top {a['n']}", ylabel="users", title="list diversity (ComiRec)")
        figs["categories"] = _png(fig)

    if a["is_dmi"]:
        r = a["refine"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
        shift = r["shift"]
        kr = shift["relative_change"].shape[1]
        axes[0].hist([shift["relative_change"][:, j] for j in range(kr)], bins=30, stacked=True,
                     label=[f"interest {j}" for j in range(kr)])
        axes[0].set(xlabel="||u - V|| / ||V||", ylabel="interests", title="how far refinement moves an interest")
        axes[0].legend(fontsize=7)
        prof = r["profile"]
        axes[1].bar(np.arange(len(prof["relative"])), prof["relative"], color="tab:orange")
        axes[1].set(xlabel="dimension", ylabel="mean |u_d - V_d| / mean |V_d|", title="change per dimension")
        g, lo = r["gained_lost"]["gained"].sum(), r["gained_lost"]["lost"].sum()
        axes[2].hist(r["overlap"], bins=20, color="tab:blue", alpha=0.8)
        axes[2].set(xlabel=f"top-{a['n']} overlap, refined vs coarse", ylabel="users",
                    title=f"hits gained {g}, lost {lo}")
        figs["refinement"] = _png(fig)
    return figs


# ---- HTML -------------------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def _img(figs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in figs:
        return ""
    data = base64.b64encode(figs[name]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}" id="fig-{name}">'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>\n{body}\n</section>\n'


def _na(reason: str) -> str:
    return f'<p class="na">Not applicable: {_e(reason)}</p>'


def _metric_rows(valid: dict | None, test: dict | None) -> tuple[list[str], list[list[str]]]:
    keys = [k for k in (test or valid or {}) if "@" in k]
    kinds = list(dict.fromkeys(k.split("@")[0] for k in keys))
    ns = sorted({int(k.split("@")[1]) for k in keys})
    header = ["metric"] + [f"{s} @{n}" for s in ("valid", "test") for n in ns]
    rows = []
    for kind in kinds:
        row = [kind]
        for src in (valid, test):
            row += [_fmt((src or {}).get(f"{kind}@{n}")) for n in ns]
        rows.append(row)
    rows.append(["users"] + [_fmt((valid or {}).get("users"))] * len(ns) + [_fmt((test or {}).get("users"))] * len(ns))
    return header, rows


def render_html(a: dict[str, Any], figs: dict[str, bytes]) -> str:
    """The whole page as one string (figures inline)."""
    k, n = a["num_interests"], a["n"]
    parts = []
    # training
    if "curves" in figs:
        body = _img(figs, "curves", "training curves") + (
            f"<p>{len([r for r in a['rows'] if r.get('split') == 'valid'])} validations; the dotted line is the best "
            f"step ({a['best_step']}), whose checkpoint every number below uses.</p>")
    else:
        body = _na("the run has no validation rows in metrics.jsonl")
    parts.append(_section("training", "Training curves", body))
    # metrics
    header, rows = _metric_rows(a["valid_best"], a["test"])
    res = a["result"] or {}
    extra = (f"<p>steps {res.get('steps')}, best step {res.get('best_step')}, stopped: {res.get('stopped')}, "
             f"training time {_fmt(res.get('train_seconds'))} s.</p>") if res else "<p>The run has not finished (no result.json).</p>"
    parts.append(_section("metrics", "Metrics (valid at the best step, test)", _table(header, rows) + extra))
    # config
    parts.append(_section("config", "Resolved config", "<details><summary>every key of config.yaml</summary>"
                          + _table(["key", "value"], [[kk, json.dumps(v)] for kk, v in a["config"].items()])
                          + "</details>"))
    # data
    meta = a["meta"]
    drows = [["name", meta.get("name")], ["path", a["data_ref"]["path"]], ["items", meta.get("num_items")],
             ["users", meta.get("num_users")]]
    for split, info in (meta.get("splits") or {}).items():
        drows.append([f"{split} split", json.dumps(info)])
    parts.append(_section("data", "Data", _table(["", ""], drows)))
    # machine
    parts.append(_section("machine", "Machine (where this report was made)",
                          _table(["", ""], [[kk, v] for kk, v in a["machine"].items()])))
    # interests
    s = a["sample"]
    irows = [[j, _fmt(float(a["argmax_share"][j])), _fmt(float(a["slot_share"][j]))] for j in range(k)]
    div = _finite_mean(a["diversity"])
    body = (f"<p>{s['users']} of {s['of']} test users (seed {s['seed']}); on them Recall@{n} = "
            f"{s['metrics'][f'recall@{n}']:.4f}. Argmax share: how often interest k has the largest inner product "
            f"with a target item (the read-out training uses); slot share: share of the merged top {n} that "
            f"interest k retrieved. Diversity: mean pairwise 1 - cos of a user's {k} interests (0 = identical), "
            f"mean {('n/a (K = 1)' if div is None else f'{div:.4f}')}.</p>"
            + _table(["interest", "argmax share", f"slot share (top {n})"], irows) + _img(figs, "interests", "interests"))
    parts.append(_section("interests", "Interests", body))
    # examples
    ex_html = []
    for e in a["examples"]:
        lists = "".join(
            f"<li>interest {j}: " + ", ".join(("<b>" + _e(lbl) + "</b>") if hit else _e(lbl) for lbl, hit in lst)
            + "</li>" for j, lst in enumerate(e["interests"]))
        ex_html.append(f"<h3>user {e['user']}</h3><p>history (last 10): {_e(', '.join(e['history']))}</p>"
                       f"<p>targets: {_e(', '.join(e['targets']))}</p><ul>{lists}</ul>")
    parts.append(_section("examples", "Each interest's top items (bold = a target)", "".join(ex_html)
                          or _na("no test users")))
    # categories
    if a["categories"]:
        info = a["category_info"]
        pur = a["category_purity"]
        crows = [[j, _fmt(_finite_mean(pur[:, j]))] for j in range(k)]
        body = (f"<p>{_e(Path(info['file']).name)} read as {info['id_space']} ids: {info['items_with_category']} items with a "
                f"category ({len(info['categories'])} categories), {info['items_without_category']} without, "
                f"{info['rows_unmatched']} rows not in the dataset. Category diversity of the merged top {n} "
                f"(ComiRec): mean {_fmt(_finite_mean(a['category_diversity']))}; purity of each interest's own top "
                f"{a['list_n']} (share of its most common category):</p>"
                + _table(["interest", "mean purity"], crows) + _img(figs, "categories", "categories"))
    else:
        body = _na("no --categories file given (two-column item,category CSV, RecBole .item, or ComiRec "
                   "NAME_item_cate.txt)")
    parts.append(_section("categories", "Categories", body))
    # refinement
    if a["is_dmi"]:
        r = a["refine"]
        sh = r["shift"]
        gl = r["gained_lost"]
        cm = r["coarse_metrics"]
        top_dims = np.argsort(-r["profile"]["relative"])[:8]
        what = (f"the refined u = w v0_hat + (1 - w) V (fusion weight w = {r['fusion_weight']})"
                if r["output"] == "fuse" else "the generated vectors v0_hat (served as extra queries)")
        body = (f"<p>The backbone's coarse interests V against {what} on the same users; the lists compare "
                f"the served queries with the coarse interests alone.</p>"
                + _table(["", "mean", "p10", "p90"],
                         [[name, _fmt(float(np.mean(v))), _fmt(float(np.percentile(v, 10))),
                           _fmt(float(np.percentile(v, 90)))] for name, v in
                          (("||u|| / ||V||", sh["norm_ratio"]), ("||u - V|| / ||V||", sh["relative_change"]),
                           ("cos(u, V)", sh["cosine"]), (f"top-{n} overlap", r["overlap"]))])
                + f"<p>Dimensions changed most (relative): {', '.join(str(int(d)) for d in top_dims)}. "
                f"Recall@{n} refined {s['metrics'][f'recall@{n}']:.4f} vs coarse {cm[f'recall@{n}']:.4f}; "
                f"hits gained {int(gl['gained'].sum())}, lost {int(gl['lost'].sum())} "
                f"({int((gl['gained'] > 0).sum())} users gain, {int((gl['lost'] > 0).sum())} lose).</p>"
                + _img(figs, "refinement", "refinement"))
    else:
        body = _na(f"model {a['model']} has no refiner (DMI only)")
    parts.append(_section("refinement", "Refinement (DMI vs its backbone)", body))
    # repeats
    rrows = [[c, v["hits"], v["repeat_hits"], _fmt(v["repeat_hits"] / v["hits"] if v["hits"] else None)]
             for c, v in a["repeats"].items()]
    parts.append(_section("repeats", "Repeat hits", "<p>Hits on items already in the user's history "
                          "(repeat consumption), sample users:</p>" + _table(["top", "hits", "repeat hits", "share"], rrows)))
    # index
    if a.get("index"):
        idx = a["index"]
        rec = idx.get("recall") or {}
        body = (f"<p>Bundle {_e(a['bundle'])}: {_e(idx.get('kind'))} index, params {_e(json.dumps(idx.get('params')))}.</p>"
                + _table(["", ""], [[kk, _fmt(v)] for kk, v in rec.items()]))
    elif a.get("bundle"):
        body = _na(f"bundle {a['bundle']} has no index (exact search)")
    else:
        body = _na("no --bundle given")
    parts.append(_section("index", "Index recall (stored by dmirec index)", body))

    title = f"dmirec report: {a['model']} on {a['meta'].get('name')}"
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}"
             ".na{color:#777}")
    toc = " · ".join(f'<a href="#{sid}">{sid}</a>' for sid in SECTIONS)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{style}</style>"
            f"</head><body><h1>{_e(title)}</h1><p>{_e(a['run_dir'])} · made {time.strftime('%Y-%m-%d %H:%M')}</p>"
            f"<p>{toc}</p>\n{''.join(parts)}</body></html>\n")


def build_report(run_dir: str | Path, out: str | Path | None = None, **options: Any) -> Path:
    """Write the HTML report (default ``RUN_DIR/report/report.html``) and its PNGs beside it."""
    analysis = analyse_run(run_dir, **options)
    figs = make_figures(analysis)
    out = Path(out) if out else Path(run_dir) / "report" / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, png in figs.items():
        (out.parent / f"{out.stem}_{name}.png").write_bytes(png)
    out.write_text(render_html(analysis, figs), encoding="utf-8")
    return out
