"""What a multi-interest model learned: pure numpy diagnostics of interests, lists and refinement.

Every function takes arrays and returns arrays or numbers; nothing here loads a model or a file,
except :func:`read_categories`, which reads an item -> category table. :mod:`dmirec.evaluation.report` runs
them on a trained run and draws the results.

Shapes: ``U`` users, ``K`` interests, ``D`` dimensions, ``N`` list length; item ids are the
prepared ids 1..num_items (0 is padding), ``-1`` in a list means "no item". Categories are an
integer array ``cats`` of length ``num_items + 1`` indexed by item id, ``-1`` where unknown.

* :func:`argmax_share`: how often each interest is the one whose inner product with a target
  item is largest (the read-out that training uses), and :func:`slot_share` how much of the
  merged list each interest retrieved.
* :func:`interest_diversity`: mean pairwise cosine distance ``1 - cos`` of a user's K interests
  (0 when they are identical).
* :func:`category_diversity`: ComiRec's list diversity, the share of item pairs of a list whose
  categories differ (unknown categories are left out of the pairs).
* :func:`category_purity`: share of a list's known-category items that fall in its most common
  category (1 when all are of one category).
* :func:`refinement_shift`, :func:`dimension_profile`, :func:`list_overlap`,
  :func:`hits_gained_lost`: how far a refiner (DMI) moves each interest, in which dimensions,
  and what that does to the top-N list and its hits, against the unrefined (coarse) interests.
* :func:`repeat_hits`: how many hits are items already in the user's history (repeat visits).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_EPS = 1e-12


# ---- interests ------------------------------------------------------------------------------
def argmax_share(interests: np.ndarray, items: np.ndarray, targets: Sequence[np.ndarray]) -> np.ndarray:
    """(K,) share of (user, target) pairs whose argmax interest is k; sums to 1.

    ``interests`` (U, K, D), ``items`` (num_items + 1, D), ``targets[u]`` the target ids of user u.
    """
    interests = np.asarray(interests, dtype=np.float64)
    u, k, _ = interests.shape
    if len(targets) != u:
        raise ValueError(f"{u} users of interests but {len(targets)} target lists")
    counts = np.zeros(k, dtype=np.float64)
    for row in range(u):
        t = np.asarray(targets[row], dtype=np.int64)
        if t.size == 0:
            continue
        scores = np.asarray(items, dtype=np.float64)[t] @ interests[row].T  # (T, K)
        counts += np.bincount(scores.argmax(axis=1), minlength=k)
    total = counts.sum()
    return counts / total if total else counts


def slot_share(interest_of_slot: np.ndarray, k: int) -> np.ndarray:
    """(K,) share of the filled list slots retrieved by each interest (``-1`` slots ignored)."""
    flat = np.asarray(interest_of_slot, dtype=np.int64).ravel()
    flat = flat[flat >= 0]
    counts = np.bincount(flat, minlength=k).astype(np.float64)[:k]
    return counts / flat.size if flat.size else counts


def interest_diversity(interests: np.ndarray) -> np.ndarray:
    """(U,) mean over interest pairs of ``1 - cos(v_i, v_j)``; NaN when K < 2.

    0 for a user whose K interests point the same way, 1 for orthogonal ones, up to 2.
    """
    v = np.asarray(interests, dtype=np.float64)  # (U, K, D)
    u, k, _ = v.shape
    if k < 2:
        return np.full(u, np.nan)
    unit = v / np.maximum(np.linalg.norm(v, axis=2, keepdims=True), _EPS)  # (U, K, D)
    cos = np.einsum("ukd,ujd->ukj", unit, unit)  # (U, K, K)
    iu = np.triu_indices(k, 1)
    return 1.0 - cos[:, iu[0], iu[1]].mean(axis=1)  # (U,)


def top_items(vectors: np.ndarray, items: np.ndarray, n: int, exclude_padding: bool = True) -> np.ndarray:
    """(..., n) ids of the n items with the largest inner product with each vector (..., D)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    scores = vectors.reshape(-1, vectors.shape[-1]) @ np.asarray(items, dtype=np.float64).T  # (M, num_items + 1)
    if exclude_padding:
        scores[:, 0] = -np.inf
    n = min(n, scores.shape[1] - (1 if exclude_padding else 0))
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]  # (M, n) unordered
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).reshape(*vectors.shape[:-1], n)


# ---- categories -----------------------------------------------------------------------------
def category_diversity(lists: np.ndarray, cats: np.ndarray) -> np.ndarray:
    """(R,) ComiRec diversity of each list (R, N): share of pairs of known-category items whose
    categories differ; NaN for a list with fewer than two known items."""
    lists = np.asarray(lists, dtype=np.int64)
    out = np.full(lists.shape[0], np.nan)
    for r, row in enumerate(lists):
        c = _known_categories(row, cats)
        m = c.size
        if m < 2:
            continue
        _, counts = np.unique(c, return_counts=True)
        same = (counts * (counts - 1) // 2).sum()
        out[r] = 1.0 - same / (m * (m - 1) / 2)
    return out


def category_purity(lists: np.ndarray, cats: np.ndarray) -> np.ndarray:
    """Share of each list's known-category items in its most common category; shape ``lists.shape[:-1]``;
    NaN for a list with no known item."""
    lists = np.asarray(lists, dtype=np.int64)
    flat = lists.reshape(-1, lists.shape[-1])
    out = np.full(flat.shape[0], np.nan)
    for r, row in enumerate(flat):
        c = _known_categories(row, cats)
        if c.size:
            out[r] = np.bincount(c).max() / c.size
    return out.reshape(lists.shape[:-1])


def _known_categories(row: np.ndarray, cats: np.ndarray) -> np.ndarray:
    ids = row[(row >= 0) & (row < len(cats))]
    c = np.asarray(cats)[ids]
    return c[c >= 0]


def read_categories(path: str | Path, item_ids: Sequence[str], id_space: str = "auto") -> tuple[np.ndarray, dict]:
    """Read an item -> category table into ``cats`` (num_items + 1,) int64, -1 where unknown.

    Accepted files: a two-column CSV/TSV ``item,category`` (an optional header line), a RecBole
    ``.item`` file (typed header; the ``item_id`` column and the first ``category``/``categories``/
    ``genre``/``class`` column, first token when it holds several) or the ComiRec
    ``NAME_item_cate.txt`` format. ``id_space``: ``raw`` (ids as in the interaction log, mapped
    through ``item_ids``), ``new`` (the prepared ids 1..N, what ComiRec's ``*_item_cate.txt``
    holds) or ``auto`` (``new`` for a ``*_item_cate.txt`` file, ``raw`` otherwise).
    Returns ``(cats, info)`` with the category names and counts of matched / unmatched rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"category file not found: {path}")
    if id_space == "auto":
        id_space = "new" if path.name.endswith("_item_cate.txt") else "raw"
    if id_space not in ("raw", "new"):
        raise ValueError(f"id_space must be raw, new or auto, got {id_space!r}")
    pairs = _recbole_pairs(path) if path.suffix == ".item" else _csv_pairs(path)
    num_items = len(item_ids)
    lookup = {raw: i + 1 for i, raw in enumerate(item_ids)} if id_space == "raw" else None
    names: dict[str, int] = {}
    cats = np.full(num_items + 1, -1, dtype=np.int64)
    unmatched = 0
    for line, item, cat in pairs:
        if id_space == "raw":
            new = lookup.get(item)
        else:
            try:
                new = int(item)
            except ValueError:
                raise ValueError(f"{path}, line {line}: item id {item!r} is not an integer "
                                 f"(this file is read as prepared ids 1..N)") from None
            new = new if 1 <= new <= num_items else None
        if new is None:
            unmatched += 1
            continue
        cats[new] = names.setdefault(cat, len(names))
    known = int((cats[1:] >= 0).sum())
    if known == 0:
        raise ValueError(f"{path}: no row names an item of the dataset (read as {id_space} ids; "
                         f"{unmatched} rows unmatched)")
    info = {"file": str(path), "id_space": id_space, "categories": list(names), "items_with_category": known,
            "items_without_category": num_items - known, "rows_unmatched": unmatched}
    return cats, info


def _csv_pairs(path: Path) -> list[tuple[int, str, str]]:
    text = path.read_text(encoding="utf-8")
    delim = "\t" if "\t" in text.split("\n", 1)[0] else ","
    out = []
    for line, row in enumerate(csv.reader(text.splitlines(), delimiter=delim), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise ValueError(f"{path}, line {line}: expected 2 fields (item, category), got {len(row)}")
        item, cat = row[0].strip(), row[1].strip()
        if line == 1 and item.lower() in ("item", "item_id", "itemid") and not cat.isdigit():
            continue  # header
        out.append((line, item, cat))
    return out


def _recbole_pairs(path: Path) -> list[tuple[int, str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file")
    header = [h.split(":")[0].strip() for h in lines[0].split("\t")]
    if "item_id" not in header:
        raise ValueError(f"{path}, line 1: a RecBole .item file needs an item_id column, got {header}")
    cat_cols = [i for i, h in enumerate(header) if h in ("category", "categories", "genre", "class")]
    if not cat_cols:
        raise ValueError(f"{path}, line 1: no category column (category, categories, genre or class) in {header}")
    ic, cc = header.index("item_id"), cat_cols[0]
    out = []
    for line, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) != len(header):
            raise ValueError(f"{path}, line {line}: expected {len(header)} fields, got {len(fields)}")
        cat = fields[cc].strip().split()[0] if fields[cc].strip() else ""
        if cat:
            out.append((line, fields[ic].strip(), cat))
    return out


# ---- refinement (DMI) against the coarse interests --------------------------------------------
def refinement_shift(coarse: np.ndarray, refined: np.ndarray) -> dict[str, np.ndarray]:
    """Per interest (U, K): ``norm_ratio`` ||u|| / ||V||, ``relative_change`` ||u - V|| / ||V||,
    ``cosine`` cos(u, V). An identity refiner gives 1, 0 and 1."""
    v = np.asarray(coarse, dtype=np.float64)
    u = np.asarray(refined, dtype=np.float64)
    if v.shape != u.shape:
        raise ValueError(f"coarse {v.shape} and refined {u.shape} interests differ in shape")
    nv = np.maximum(np.linalg.norm(v, axis=-1), _EPS)  # (U, K)
    nu = np.linalg.norm(u, axis=-1)  # (U, K)
    return {"norm_ratio": nu / nv, "relative_change": np.linalg.norm(u - v, axis=-1) / nv,
            "cosine": (u * v).sum(-1) / (nv * np.maximum(nu, _EPS))}


def dimension_profile(coarse: np.ndarray, refined: np.ndarray) -> dict[str, np.ndarray]:
    """Per dimension (D,) over all users and interests: ``mean_abs_change`` mean |u_d - V_d|,
    ``mean_change`` mean (u_d - V_d) and ``relative`` mean |u_d - V_d| / mean |V_d|."""
    v = np.asarray(coarse, dtype=np.float64)
    u = np.asarray(refined, dtype=np.float64)
    d = v.shape[-1]
    diff = (u - v).reshape(-1, d)  # (U*K, D)
    scale = np.abs(v.reshape(-1, d)).mean(axis=0)  # (D,)
    mac = np.abs(diff).mean(axis=0)
    return {"mean_abs_change": mac, "mean_change": diff.mean(axis=0), "relative": mac / np.maximum(scale, _EPS)}


def list_overlap(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """(U,) |first n of a ∩ first n of b| / n (``-1`` slots never match)."""
    a = np.asarray(a, dtype=np.int64)[:, :n]
    b = np.asarray(b, dtype=np.int64)[:, :n]
    out = np.empty(a.shape[0])
    for r in range(a.shape[0]):
        out[r] = np.intersect1d(a[r][a[r] >= 0], b[r][b[r] >= 0]).size / n
    return out


def hits_gained_lost(hits_refined: np.ndarray, hits_coarse: np.ndarray, recs_refined: np.ndarray,
                     recs_coarse: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per user: ``gained`` = distinct target items in the refined top n but not the coarse top n,
    ``lost`` the reverse (hit matrices (U, N) from :func:`dmirec.evaluation.metrics.hit_matrix`)."""
    gained = np.zeros(len(recs_refined), dtype=np.int64)
    lost = np.zeros(len(recs_refined), dtype=np.int64)
    for r in range(len(recs_refined)):
        hr = set(np.asarray(recs_refined[r][:n])[np.asarray(hits_refined[r][:n], dtype=bool)].tolist())
        hc = set(np.asarray(recs_coarse[r][:n])[np.asarray(hits_coarse[r][:n], dtype=bool)].tolist())
        gained[r], lost[r] = len(hr - hc), len(hc - hr)
    return {"gained": gained, "lost": lost}


# ---- repeats --------------------------------------------------------------------------------
def repeat_hits(recs: np.ndarray, hits: np.ndarray, histories: Sequence[np.ndarray], n: int) -> dict[str, int]:
    """Among the hits in the first n slots: how many are items already in the user's history.

    Returns ``{"hits": total hits, "repeat_hits": hits on history items}``.
    """
    total = repeats = 0
    for r in range(len(recs)):
        h = np.asarray(hits[r][:n], dtype=bool)
        ids = np.asarray(recs[r][:n])[h]
        total += int(ids.size)
        repeats += int(np.isin(ids, np.asarray(histories[r])).sum())
    return {"hits": total, "repeat_hits": repeats}
