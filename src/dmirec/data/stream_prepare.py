"""Streaming ``prepare``: the same dataset folder as :func:`dmirec.data.prepare.prepare`, read in
record batches, without ever holding the log as a DataFrame of raw-id strings.

The in-memory path reads the whole log into a DataFrame whose id columns are Python strings
(about 100 bytes per id, several GB per 10M rows). This path reads the log with the one streaming
reader (:func:`dmirec.data.logstream.iter_log`, also batch recommendation's) in batches of
``batch_rows`` rows, turns each batch's ids into integer codes at once (first-seen order across
the whole file, as ``pandas.factorize`` does over the whole column), and keeps only the codes and
the timestamps: 16 bytes per row plus one copy of each distinct raw id. The ComiRec protocol then
runs on the codes with the very same function as the in-memory path (``_comirec_split_codes``),
and the folder is written by the same writer, so the output is identical byte for byte (tested).

What it reads: CSV/TSV (plain or gzip) with a header line naming the columns, and Parquet with
string or integer id columns and numeric, string or datetime timestamps. A pipe or ``/dev/stdin``
is first copied to a temporary file beside the output folder (the reader opens the file twice),
its format sniffed from the content when ``format`` is not given; errors name the pipe and the
true line. Anything else
(headerless CSV, float id columns, RecBole, ComiRec splits) is an error that points to
``dmirec prepare`` without ``--stream``, which handles every format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .logstream import iter_log, parquet_columns
from .prepare import _comirec_split_codes, _default_name, _write_dataset, check_prepare_args
from .readers import InputError, infer_format, spooled_input

__all__ = ["prepare_streaming"]


class _Codes:
    """Incremental factorisation in first-seen order: raw id text -> 0..U-1."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.uniques: list[str] = []

    def add(self, values: np.ndarray) -> np.ndarray:
        local, uniq = pd.factorize(values, sort=False)  # (n,), (u,) first-seen order in the batch
        known = np.fromiter((self.index.get(x, -1) for x in uniq), dtype=np.int64, count=len(uniq))
        for j in np.flatnonzero(known < 0):  # new ids, in batch first-seen order
            known[j] = len(self.uniques)
            self.index[uniq[j]] = known[j]
            self.uniques.append(uniq[j])
        return known[local]


def _check_id_types(path: Path, cols: dict[str, str]) -> None:
    """Parquet id columns must hold strings or integers: a float id column is written as integers
    only when every value in it is whole, a whole-column decision that `dmirec prepare` makes and
    a stream of batches cannot."""
    import pyarrow as pa

    pf, cols = parquet_columns(path, cols)
    for role in ("user", "item"):
        kind = pf.schema_arrow.field(cols[role]).type
        if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(f"{path}: column {cols[role]!r} has type {kind}; the streaming reader takes string or "
                             f"integer ids (`dmirec prepare` without --stream converts others)")


def prepare_streaming(input, outdir, format: str | None = None, core: int = 5, seed: int = 1230,
                      name: str | None = None, comirec_files: bool = False, user_col: str = "user_id",
                      item_col: str = "item_id", time_col: str = "timestamp", seq_len: int | None = None,
                      batch_rows: int = 1 << 20):
    """:func:`dmirec.data.prepare.prepare` for CSV/Parquet logs, read ``batch_rows`` rows at a time."""
    core, seed = check_prepare_args(core, seed, seq_len)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, not {batch_rows!r}")
    path = Path(input)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; the streaming reader takes a csv or parquet file")
    # a pipe or /dev/stdin is copied to a temporary file beside the output (the reader opens it
    # twice), its format sniffed when not given; errors name the pipe
    spool = Path(outdir).resolve().parent
    spool.mkdir(parents=True, exist_ok=True)
    with spooled_input(path, format, spool) as (readable, fmt):
        return _prepare_stream_file(readable, path, outdir, fmt, core, seed, name, comirec_files, user_col,
                                    item_col, time_col, seq_len, batch_rows)


def _prepare_stream_file(readable: Path, path: Path, outdir, fmt: str, core: int, seed: int, name: str | None,
                         comirec_files: bool, user_col: str, item_col: str, time_col: str, seq_len: int | None,
                         batch_rows: int):
    """The streaming prepare of the regular file ``readable`` (``path`` itself, or a pipe's copy);
    ``path`` names the source in the folder's metadata."""
    if fmt not in ("csv", "parquet"):
        raise InputError(f"{path}: the streaming reader takes csv or parquet logs, not {fmt}; "
                         f"use `dmirec prepare` without --stream")
    if fmt == "parquet":
        _check_id_types(readable, {"user": user_col, "item": item_col, "timestamp": time_col})
    users, items = _Codes(), _Codes()
    u_parts, i_parts, t_parts = [], [], []
    rows = 0
    # csv: a header line naming the columns (a headerless log is refused: say which columns are which
    # with `dmirec prepare` without --stream)
    for batch in iter_log(readable, fmt, user_col=user_col, item_col=item_col, time_col=time_col, header=True,
                          batch_rows=batch_rows):
        u_parts.append(users.add(batch.users).astype(np.int32))
        i_parts.append(items.add(batch.items).astype(np.int32))
        t_parts.append(batch.timestamps)  # int64 or float64 by batch; concatenated as the whole column reads
        rows += len(batch.users)
    if rows == 0:
        raise InputError(f"{path}: no interactions (0 rows)")
    u_codes, i_codes, ts = np.concatenate(u_parts), np.concatenate(i_parts), np.concatenate(t_parts)
    del u_parts, i_parts, t_parts
    data, stats = _comirec_split_codes(u_codes, np.asarray(users.uniques, dtype=object), i_codes,
                                       np.asarray(items.uniques, dtype=object), ts, core, seed, str(path))
    if name is None:
        name = _default_name(path, fmt, None)
    return _write_dataset(outdir, data, stats, name=name, source=str(path), fmt=fmt, core=core, seed=seed,
                          comirec_files=comirec_files, seq_len=seq_len, converted=False)
