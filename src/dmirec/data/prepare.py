"""Turn a raw interaction log into a prepared dataset folder (see :mod:`dmirec.data.dataset`).

The split follows the ComiRec/REMI ``process/data.py`` preprocessing exactly, so that the same
log gives the same users, item ids and split files as the reference code:

1. Count every item over all rows (repeats count). Items with at least ``core`` rows get new ids
   1..N in descending count order; ties keep first-seen order (a stable sort). 0 is padding.
2. Keep a user (users in first-seen order) when at least ``core`` of their rows are kept items.
3. ``random.Random(seed).shuffle`` the kept users (the same as ``random.seed(seed);
   random.shuffle(users)``); new user ids are 0..U-1 in that order.
4. Users ``[0, int(0.8 U))`` are train, ``[int(0.8 U), int(0.9 U))`` valid, the rest test.
5. Each user's rows are sorted by their float timestamp with a stable sort (ties keep file
   order); rows of dropped items are skipped. Timestamps are stored as the ComiRec files print
   them, ``'%d' % float(ts)`` (truncation toward zero).

A ComiRec split given as input (``format="comirec"``) is converted as it is, never re-split.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..util.atomic import naming_write_errors
from .dataset import FORMAT_VERSION, SPLITS, DatasetError, Sequences, save_split, write_ids
from .readers import ComirecSplit, InputError, infer_format, read_log, spooled_input

__all__ = ["PrepareReport", "prepare", "prepare_shipped_beauty", "shipped_beauty_path"]

_INT64_LIMIT = 2.0**63
_GENERIC_STEMS = {"interactions"}


@dataclass
class PrepareReport:
    """What ``prepare`` read, kept and filtered (and why)."""

    name: str
    source: str
    format: str
    core: int | None
    seed: int | None
    rows_read: int
    users_read: int
    items_read: int
    rows_kept: int
    users_kept: int
    items_kept: int
    rows_filtered_item_core: int  # rows of items with fewer than `core` rows
    users_filtered_core: int  # users with fewer than `core` rows of kept items
    rows_filtered_user_core: int = 0  # rows of kept items that belonged to those users
    items_filtered_core: int = 0
    split_users: dict = field(default_factory=dict)
    split_interactions: dict = field(default_factory=dict)
    outdir: str = ""
    converted: bool = False  # True when a given ComiRec split was converted without re-splitting
    ids_with_spaces: int = 0  # distinct raw user/item ids with leading or trailing whitespace (kept as written)
    duplicate_rows: int = 0  # rows repeating an earlier (user, item, timestamp) row (kept, as the protocol does)

    def summary(self) -> str:
        lines = [f"Read {self.rows_read:,} interactions of {self.users_read:,} users and "
                 f"{self.items_read:,} items from {self.source} ({self.format})."]
        if self.converted:
            lines.append("Converted the given ComiRec split as it is: nothing filtered, nothing re-split.")
        else:
            c = self.core
            lines.append(f"Filtered (ComiRec protocol, core {c}): {self.items_filtered_core:,} items with fewer "
                         f"than {c} interactions ({self.rows_filtered_item_core:,} interactions); then "
                         f"{self.users_filtered_core:,} users with fewer than {c} interactions of kept items "
                         f"({self.rows_filtered_user_core:,} more interactions).")
        lines.append(f"Kept {self.rows_kept:,} interactions of {self.users_kept:,} users and "
                     f"{self.items_kept:,} items.")
        if self.ids_with_spaces:
            lines.append(f"Note: {self.ids_with_spaces:,} raw user/item ids have surrounding spaces; they are kept "
                         f"as written, so ' a' and 'a' are different ids (strip them first if they are the same).")
        if self.duplicate_rows:
            lines.append(f"Note: {self.duplicate_rows:,} duplicate rows repeat an earlier (user, item, timestamp) row; "
                         f"they are kept as separate interactions (the ComiRec protocol counts repeats).")
        if self.split_users:
            parts = ", ".join(f"{s} {self.split_users[s]:,} users / {self.split_interactions[s]:,} interactions"
                              for s in SPLITS)
            how = "as given" if self.converted else f"users shuffled with seed {self.seed}, 80/10/10"
            lines.append(f"Split ({how}): {parts}.")
        if self.outdir:
            lines.append(f"Wrote {self.outdir}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the ComiRec/REMI protocol on arrays


@dataclass
class _Split:
    item_raw: list[str]  # raw id of new item i+1 at index i
    user_raw: list[str]  # raw id of new user j at index j
    splits: dict[str, Sequences]


def _comirec_split(frame: pd.DataFrame, core: int, seed: int, source: str) -> tuple[_Split, dict]:
    """Apply the protocol to a (user, item, timestamp) frame in file order."""
    u_codes, u_uniques = pd.factorize(frame["user"], sort=False)  # first-seen order
    i_codes, i_uniques = pd.factorize(frame["item"], sort=False)
    return _comirec_split_codes(u_codes, u_uniques, i_codes, i_uniques, frame["timestamp"].to_numpy(), core, seed,
                                source)


def _comirec_split_codes(u_codes: np.ndarray, u_uniques, i_codes: np.ndarray, i_uniques, ts: np.ndarray,
                         core: int, seed: int, source: str) -> tuple[_Split, dict]:
    """The protocol on factorised rows (codes in first-seen order, their raw ids, timestamps); the
    in-memory and the streaming reader (:mod:`dmirec.data.stream_prepare`) both end here."""
    n_rows, n_users, n_items = len(u_codes), len(u_uniques), len(i_uniques)
    duplicate_rows = _count_duplicates(u_codes, i_codes, ts)

    counts = np.bincount(i_codes, minlength=n_items)  # (I,)
    by_count = np.argsort(-counts, kind="stable")  # descending, ties in first-seen order
    num_items = int(np.count_nonzero(counts >= core))
    kept_items = by_count[:num_items]
    item_new = np.zeros(n_items, dtype=np.int32)  # 0: dropped (int32 per-row arrays: half the peak memory)
    item_new[kept_items] = np.arange(1, num_items + 1)
    row_item = item_new[i_codes]  # (R,)
    row_item_kept = row_item > 0

    user_rows = np.bincount(u_codes[row_item_kept], minlength=n_users)  # kept-item rows per user
    kept_users = np.flatnonzero(user_rows >= core)  # first-seen order
    num_users = len(kept_users)
    if num_users == 0 or num_items == 0:
        raise InputError(f"{source}: nothing left after filtering with core={core}: {num_items:,} of "
                         f"{n_items:,} items have at least {core} interactions, and no user has at least "
                         f"{core} interactions of those items; lower the core")
    order = kept_users.tolist()
    random.Random(seed).shuffle(order)  # == random.seed(seed); random.shuffle(order)
    shuffled = np.asarray(order, dtype=np.int64)
    user_new = np.full(n_users, -1, dtype=np.int32)
    user_new[shuffled] = np.arange(num_users)

    row_user = user_new[u_codes]
    keep = row_item_kept & (row_user >= 0)
    n_item_kept, n_kept = int(row_item_kept.sum()), int(keep.sum())
    del row_item_kept
    tsf = ts.astype(np.float64, copy=False)  # the protocol sorts and prints float(ts)
    pos = np.flatnonzero(keep)
    del keep
    ku, ki, kt = row_user[pos], row_item[pos], tsf[pos]
    del row_user, row_item, tsf
    srt = np.lexsort((pos, kt, ku))  # by user, then timestamp, ties in file order
    del pos
    ku = ku[srt]  # one reordered array at a time keeps the peak low
    ki = ki[srt]
    kt = kt[srt]
    del srt
    if len(kt) and np.abs(kt).max() >= _INT64_LIMIT:
        raise InputError(f"{source}: timestamps beyond the int64 range cannot be stored")
    ts_out = np.trunc(kt, out=kt).astype(np.int64)  # '%d' % float
    del kt

    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(ku, minlength=num_users), out=offsets[1:])
    split_1 = int(num_users * 0.8)
    split_2 = int(num_users * 0.9)
    bounds = {"train": (0, split_1), "valid": (split_1, split_2), "test": (split_2, num_users)}
    splits = {}
    for s, (lo, hi) in bounds.items():
        a, b = offsets[lo], offsets[hi]
        splits[s] = Sequences(offsets=offsets[lo:hi + 1] - a, items=ki[a:b].astype(np.int32),
                              users=np.arange(lo, hi, dtype=np.int64), timestamps=ts_out[a:b])

    item_raw = [str(x) for x in np.asarray(i_uniques, dtype=object)[kept_items]]
    user_raw = [str(x) for x in np.asarray(u_uniques, dtype=object)[shuffled]]
    n_item_rows_dropped = int(n_rows - n_item_kept)
    stats = dict(
        rows_read=n_rows, users_read=n_users, items_read=n_items,
        rows_kept=n_kept, users_kept=num_users, items_kept=num_items,
        rows_filtered_item_core=n_item_rows_dropped, users_filtered_core=int(n_users - num_users),
        rows_filtered_user_core=int(n_item_kept - n_kept),
        items_filtered_core=int(n_items - num_items),
        ids_with_spaces=_count_spaced(u_uniques) + _count_spaced(i_uniques),
        duplicate_rows=duplicate_rows,
    )
    return _Split(item_raw=item_raw, user_raw=user_raw, splits=splits), stats


def _count_duplicates(u_codes: np.ndarray, i_codes: np.ndarray, ts: np.ndarray) -> int:
    """Rows repeating an earlier (user, item, timestamp) row."""
    if len(u_codes) < 2:
        return 0
    order = np.lexsort((ts, i_codes, u_codes))
    same = ((u_codes[order][1:] == u_codes[order][:-1]) & (i_codes[order][1:] == i_codes[order][:-1])
            & (ts[order][1:] == ts[order][:-1]))
    return int(same.sum())


def _count_spaced(uniques) -> int:
    """Distinct ids with leading or trailing whitespace."""
    values = pd.Series(np.asarray(uniques, dtype=object)).astype(str)
    return int((values != values.str.strip()).sum())


# --------------------------------------------------------------------------------------------
# converting a given ComiRec split


def _map_ids(mapping: pd.DataFrame | None, start: int, used_max: int, path: Path, kind: str) -> list[str]:
    """Raw ids ordered by new id ``start..``; identity (str of the new id) without a map file."""
    if mapping is None:
        return [str(j) for j in range(start, used_max + 1)]
    new = mapping["new"].to_numpy()
    n = len(new)
    expected = np.arange(start, start + n)
    if n == 0 or not np.array_equal(np.sort(new), expected):
        raise InputError(f"{path}: {kind} ids must be {start}..{start + n - 1} contiguous, each once "
                         f"(found {n} entries, ids {int(new.min()) if n else '-'}..{int(new.max()) if n else '-'})")
    raws = mapping["raw"].to_numpy(dtype=object)
    out = np.empty(n, dtype=object)
    out[new - start] = raws
    return out.tolist()


def _convert_comirec(sp: ComirecSplit) -> tuple[_Split, dict]:
    all_items = [df["item"].to_numpy() for df in sp.splits.values()]
    all_users = [df["user"].to_numpy() for df in sp.splits.values()]
    items_cat = np.concatenate(all_items)
    users_cat = np.concatenate(all_users)
    for s, df in sp.splits.items():
        if len(df) and df["item"].min() < 1:
            i = int(np.argmax(df["item"].to_numpy() < 1))
            raise InputError(f"{sp.files[s]}, line {i + 1}: item id {int(df['item'].iloc[i])} < 1 "
                             f"(ComiRec item ids are 1..N, 0 is padding)")
        if len(df) and df["user"].min() < 0:
            i = int(np.argmax(df["user"].to_numpy() < 0))
            raise InputError(f"{sp.files[s]}, line {i + 1}: negative user id {int(df['user'].iloc[i])}")
    item_raw = _map_ids(sp.item_map, 1, int(items_cat.max()), sp.files["item_map"], "item")
    num_items = len(item_raw)
    user_raw = _map_ids(sp.user_map, 0, int(users_cat.max()), sp.files["user_map"], "user")
    num_users = len(user_raw)
    for s, df in sp.splits.items():
        for col, limit, mfile in (("item", num_items, "item_map"), ("user", num_users - 1, "user_map")):
            over = df[col].to_numpy() > limit
            if over.any():
                i = int(np.argmax(over))
                raise InputError(f"{sp.files[s]}, line {i + 1}: {col} id {int(df[col].iloc[i])} is not in "
                                 f"{sp.files[mfile].name} (ids up to {limit})")

    seen: dict[int, str] = {}
    splits = {}
    for s in SPLITS:
        df = sp.splits[s]
        codes, uniques = pd.factorize(df["user"].to_numpy(), sort=False)
        for u in uniques.tolist():
            if u in seen:
                raise InputError(f"{sp.files[s]}: user {u} is also in {sp.files[seen[u]].name} "
                                 f"(a user belongs to one split)")
            seen[u] = s
        idx = df["index"].to_numpy()
        srt = np.lexsort((idx, codes))
        counts = np.bincount(codes, minlength=len(uniques))
        offsets = np.zeros(len(uniques) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        expect = np.arange(len(df)) - offsets[codes[srt]]
        bad = idx[srt] != expect
        if bad.any():
            j = int(srt[np.argmax(bad)])
            raise InputError(f"{sp.files[s]}, line {j + 1}: user {int(df['user'].iloc[j])}'s index values "
                             f"are not 0..n-1 (found {int(idx[j])})")
        splits[s] = Sequences(offsets=offsets, items=df["item"].to_numpy()[srt].astype(np.int32),
                              users=np.asarray(uniques, dtype=np.int64),
                              timestamps=df["timestamp"].to_numpy()[srt].astype(np.int64))
    rows = int(sum(len(df) for df in sp.splits.values()))
    stats = dict(rows_read=rows, users_read=len(seen), items_read=num_items, rows_kept=rows,
                 users_kept=len(seen), items_kept=num_items, rows_filtered_item_core=0,
                 users_filtered_core=0)
    return _Split(item_raw=item_raw, user_raw=user_raw, splits=splits), stats


# --------------------------------------------------------------------------------------------
# writing


def _write_comirec_files(outdir: Path, name: str, data: _Split) -> None:
    """The ComiRec/REMI split and map files, byte for byte as ``process/data.py`` writes them."""
    for s in SPLITS:
        seqs = data.splits[s]
        lengths = np.diff(seqs.offsets)
        users = np.repeat(seqs.users, lengths).tolist()
        index = (np.arange(len(seqs.items)) - np.repeat(seqs.offsets[:-1], lengths)).tolist()
        text = "".join([f"{u},{i},{k},{t}\n" for u, i, k, t in
                        zip(users, seqs.items.tolist(), index, seqs.timestamps.tolist())])
        (outdir / f"{name}_{s}.txt").write_text(text, encoding="utf-8", newline="")
    (outdir / f"{name}_user_map.txt").write_text(
        "".join(f"{raw},{j}\n" for j, raw in enumerate(data.user_raw)), encoding="utf-8", newline="")
    (outdir / f"{name}_item_map.txt").write_text(
        "".join(f"{raw},{j}\n" for j, raw in enumerate(data.item_raw, start=1)), encoding="utf-8", newline="")


def _default_name(path: Path, fmt: str, sp: ComirecSplit | None) -> str:
    if sp is not None:
        return sp.name
    stem = path.name
    for suffix in (".gz", ".csv", ".tsv", ".txt", ".parquet", ".pq", ".parq", ".inter"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    if stem.lower() in _GENERIC_STEMS and path.parent.name:
        return path.parent.name  # ../datasets/beauty/interactions.csv -> beauty
    return stem or "data"


def prepare(input, outdir, format: str | None = None, core: int = 5, seed: int = 1230,
            name: str | None = None, comirec_files: bool = False, user_col: str | int = "user_id",
            item_col: str | int = "item_id", time_col: str | int = "timestamp",
            seq_len: int | None = None, header: str | bool = "infer", sep: str | None = None) -> PrepareReport:
    """Prepare a dataset folder from a raw log (or convert a ComiRec split) and report what happened.

    ``input``: a csv/csv.gz/tsv, parquet or RecBole ``.inter`` file, a ComiRec split folder or
    ``NAME_train.txt``, or a DataFrame with columns user, item, timestamp in log order.
    ``format``: csv, parquet, recbole or comirec; inferred from the name when None.
    ``core``/``seed``: the ComiRec/REMI filter threshold and shuffle seed (ignored for comirec input).
    ``name``: dataset name (default: the file stem, the folder name for ``interactions.csv``, or
    the ComiRec split name). ``comirec_files``: also write NAME_{train,valid,test,user_map,item_map}.txt.
    ``seq_len``: recorded in meta.json as the suggested model input length when given.
    ``header``/``sep``: csv only.
    """
    core, seed = check_prepare_args(core, seed, seq_len)

    sp: ComirecSplit | None = None
    if isinstance(input, pd.DataFrame):
        missing = [c for c in ("user", "item", "timestamp") if c not in input.columns]
        if missing:
            raise InputError(f"DataFrame input: missing column(s) {', '.join(missing)} (need user, item, timestamp)")
        fmt, source, path = "dataframe", "DataFrame", None
        if len(input) == 0:
            raise InputError("DataFrame input: no interactions")
        for col in ("user", "item"):
            bad = input[col].isna().to_numpy() | (input[col].astype(str) == "").to_numpy()
            if bad.any():
                raise InputError(f"DataFrame input, row {int(np.argmax(bad)) + 1}: missing or empty {col} id")
        ts = pd.to_numeric(input["timestamp"], errors="coerce").to_numpy()
        bad = ~np.isfinite(ts.astype(np.float64))
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"DataFrame input, row {i + 1}: timestamp {input['timestamp'].iloc[i]!r} is not a number")
        frame = pd.DataFrame({"user": input["user"].to_numpy(), "item": input["item"].to_numpy(), "timestamp": ts})
    else:
        path = Path(input)
        source = str(path)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        with spooled_input(path, format) as (readable, fmt):  # a pipe: a temporary copy, its format sniffed
            if fmt == "comirec":
                sp = read_log(path, format="comirec", **({"name": name} if name and path.is_dir() else {}))
            else:
                opts = dict(user_col=user_col, item_col=item_col, time_col=time_col)
                if fmt == "csv":
                    opts["header"] = header
                    if sep is not None:
                        opts["sep"] = sep
                frame = read_log(readable, format=fmt, **opts)

    if sp is not None:
        data, stats = _convert_comirec(sp)
        core_used = seed_used = None
    else:
        data, stats = _comirec_split(frame, core, seed, source)
        core_used, seed_used = core, seed
    if name is None:
        name = "data" if path is None else _default_name(path, fmt, sp)
    return _write_dataset(outdir, data, stats, name=name, source=source, fmt=fmt, core=core, seed=seed,
                          comirec_files=comirec_files, seq_len=seq_len, converted=sp is not None,
                          core_used=core_used, seed_used=seed_used)


def check_prepare_args(core, seed, seq_len) -> tuple[int, int]:
    """Validate prepare's core, seed and seq_len; returns (core, seed) as ints."""
    if isinstance(core, bool) or not isinstance(core, (int, np.integer)) or core < 0:
        raise ValueError(f"core must be a non-negative integer, not {core!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, not {seed!r}")
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1):
        raise ValueError(f"seq_len must be a positive integer, not {seq_len!r}")
    return int(core), int(seed)


def _write_dataset(outdir, data: _Split, stats: dict, *, name: str, source: str, fmt: str, core: int, seed: int,
                   comirec_files: bool, seq_len: int | None, converted: bool, core_used: int | None = None,
                   seed_used: int | None = None) -> PrepareReport:
    """Write the prepared folder (arrays, id maps, optional ComiRec files, meta.json last).

    Every file is first written into a temporary folder inside ``outdir``; only when all are
    written are they renamed into place (meta.json last). A failed write (a full disk) names the
    file and leaves a dataset already in ``outdir`` as it was."""
    if not converted:
        core_used, seed_used = core, seed
    sp = True if converted else None
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for leftover in outdir.glob(".prepare.*.tmp"):  # of a killed prepare into this folder
        shutil.rmtree(leftover, ignore_errors=True)
    stage = outdir / f".prepare.{os.getpid()}.tmp"
    stage.mkdir()
    try:
        _write_files(stage, data, source, name, comirec_files)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError) and str(stage) in str(exc):  # name the file as it will be called
            err = OSError(str(exc).replace(str(stage), str(outdir)))
            err.errno, err.named = exc.errno, True
            raise err from None
        raise

    report = PrepareReport(
        name=name, source=source, format=fmt, core=core_used, seed=seed_used, **stats,
        split_users={s: data.splits[s].num_users for s in SPLITS},
        split_interactions={s: int(len(data.splits[s].items)) for s in SPLITS},
        outdir=str(outdir), converted=sp is not None,
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "num_items": len(data.item_raw),
        "num_users": len(data.user_raw),
        "splits": {s: {"users": report.split_users[s], "interactions": report.split_interactions[s]}
                   for s in SPLITS},
        "source": source,
        "source_format": fmt,
        "protocol": ({"name": "comirec", "converted": True} if sp is not None else
                     {"name": "comirec", "core": core, "seed": seed, "split": [0.8, 0.1, 0.1]}),
        "report": asdict(report),
    }
    if seq_len is not None:
        meta["seq_len"] = int(seq_len)
    if comirec_files:
        meta["comirec_files"] = [f"{name}_{s}.txt" for s in (*SPLITS, "user_map", "item_map")]
    try:
        with _naming_write_errors(outdir / "meta.json"):
            (stage / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    meta_path = outdir / "meta.json"
    if meta_path.exists():
        meta_path.unlink()  # the folder is not a dataset until the new meta.json is in place
    for staged in sorted(stage.iterdir(), key=lambda p: p.name == "meta.json"):  # meta.json last
        os.replace(staged, outdir / staged.name)
    stage.rmdir()
    return report


def _write_files(outdir: Path, data: _Split, source: str, name: str, comirec_files: bool) -> None:
    """The arrays, id maps and optional ComiRec files of a prepared folder; errors name each file."""
    for s in SPLITS:
        save_split(outdir, s, data.splits[s])  # a failed write names its file
    try:
        with _naming_write_errors(outdir / "item_ids.txt"):
            write_ids(outdir / "item_ids.txt", data.item_raw)
        with _naming_write_errors(outdir / "user_ids.txt"):
            write_ids(outdir / "user_ids.txt", data.user_raw)
    except DatasetError as e:
        raise InputError(f"{source}: {e}") from None
    if comirec_files:
        with _naming_write_errors(outdir / f"{name}_*.txt"):
            _write_comirec_files(outdir, name, data)


@contextlib.contextmanager
def _naming_write_errors(what):
    """An OSError while writing names the file and the cause in one line (:mod:`dmirec.util.atomic`)."""
    with naming_write_errors(what):
        yield


def shipped_beauty_path():
    """The packaged beauty log (``dmirec/resources/beauty.csv.gz``) as an importlib Traversable."""
    from importlib.resources import files

    return files("dmirec").joinpath("resources", "beauty.csv.gz")


def prepare_shipped_beauty(outdir, **kwargs) -> PrepareReport:
    """Prepare the packaged Amazon Beauty 5-core log (ComiRec protocol) as dataset ``beauty``."""
    from importlib.resources import as_file

    kwargs.setdefault("name", "beauty")
    with as_file(shipped_beauty_path()) as path:
        report = prepare(path, outdir, format="csv", **kwargs)
    return report
