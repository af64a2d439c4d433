"""Streaming ``prepare``: the same dataset folder as :func:`dmirec.data.prepare.prepare`, read in
record batches, without ever holding the log as a DataFrame of raw-id strings.

The in-memory path reads the whole log into a DataFrame whose id columns are Python strings
(about 100 bytes per id, several GB per 10M rows). This path reads CSV (plain or gzip, with a
header naming the columns) or Parquet in batches of ``batch_rows`` rows with pyarrow, turns each
batch's ids into integer codes at once (first-seen order across the whole file, as
``pandas.factorize`` does over the whole column), and keeps only the codes and float timestamps:
16 bytes per row plus one copy of each distinct raw id. The ComiRec protocol then runs on the
codes with the very same function as the in-memory path (``_comirec_split_codes``), and the
folder is written by the same writer, so the output is identical byte for byte (tested).

What it reads: id columns of strings or integers (raw ids are their text), numeric timestamps.
Anything else (float or datetime columns, headerless CSV, RecBole, ComiRec splits) is an error
that points to ``dmirec prepare`` without ``--stream``, which handles every format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .readers import InputError, infer_format

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


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _batches(path: Path, fmt: str, cols: list[str], batch_rows: int) -> Iterator:
    import pyarrow as pa

    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{path}: not a Parquet file ({e})") from None
        missing = [c for c in cols if c not in pf.schema_arrow.names]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(map(repr, missing))} (the file has: "
                             f"{', '.join(pf.schema_arrow.names)}); choose columns with --user-col/--item-col/--time-col")
        yield from pf.iter_batches(batch_size=batch_rows, columns=list(dict.fromkeys(cols)))
        return
    import pyarrow.csv as pcsv

    stream = pa.input_stream(str(path), compression="gzip" if _is_gzip(path) else None)
    types = {cols[0]: pa.string(), cols[1]: pa.string(), cols[2]: pa.float64()}
    try:
        reader = pcsv.open_csv(stream, read_options=pcsv.ReadOptions(block_size=max(1 << 16, 48 * batch_rows)),
                               convert_options=pcsv.ConvertOptions(column_types=types, include_columns=cols,
                                                                   strings_can_be_null=False))
        for batch in reader:
            yield batch
    except (pa.ArrowInvalid, pa.ArrowKeyError) as e:
        raise InputError(f"{path}: {e} (the streaming reader needs a header naming the columns "
                         f"{', '.join(map(repr, cols))}; `dmirec prepare` without --stream reads every layout)") from None


def _ids(column, path: Path, role: str, name: str, first_row: int, line_offset: int) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_integer(column.type):
        column = column.cast(pa.string())
    elif not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise InputError(f"{path}: column {name!r} has type {column.type}; the streaming reader takes string or "
                         f"integer ids (`dmirec prepare` without --stream converts others)")
    bad = pc.or_(pc.is_null(column), pc.equal(pc.utf8_length(column), 0)).to_numpy(zero_copy_only=False)
    if bad.any():
        where = "line" if line_offset else "row"
        raise InputError(f"{path}, {where} {first_row + int(np.argmax(bad)) + 1 + line_offset}: "
                         f"missing or empty {role} id (column {name!r})")
    return column.to_numpy(zero_copy_only=False)


def _times(column, path: Path, name: str, first_row: int, line_offset: int) -> np.ndarray:
    import pyarrow as pa

    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise InputError(f"{path}: column {name!r} has type {column.type}; the streaming reader takes numeric "
                         f"timestamps (`dmirec prepare` without --stream converts datetimes)")
    values = column.to_numpy(zero_copy_only=False)
    ts = values.astype(np.float64)  # the protocol sorts on float(ts)
    bad = ~np.isfinite(ts)
    if bad.any():
        where = "line" if line_offset else "row"
        raise InputError(f"{path}, {where} {first_row + int(np.argmax(bad)) + 1 + line_offset}: "
                         f"timestamp is missing or not a number (column {name!r})")
    return ts


def prepare_streaming(input, outdir, format: str | None = None, core: int = 5, seed: int = 1230,
                      name: str | None = None, comirec_files: bool = False, user_col: str = "user_id",
                      item_col: str = "item_id", time_col: str = "timestamp", seq_len: int | None = None,
                      batch_rows: int = 1 << 20):
    """:func:`dmirec.data.prepare.prepare` for CSV/Parquet logs, read ``batch_rows`` rows at a time."""
    from .prepare import _comirec_split_codes, _default_name, _write_dataset, check_prepare_args

    core, seed = check_prepare_args(core, seed, seq_len)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, not {batch_rows!r}")
    path = Path(input)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    fmt = format or infer_format(path)
    if fmt not in ("csv", "parquet"):
        raise InputError(f"{path}: the streaming reader takes csv or parquet logs, not {fmt}; "
                         f"use `dmirec prepare` without --stream")
    cols = [user_col, item_col, time_col]
    users, items = _Codes(), _Codes()
    u_parts, i_parts, t_parts = [], [], []
    rows = 0
    line_offset = 1 if fmt == "csv" else 0  # csv errors name the file line (header = line 1)
    for batch in _batches(path, fmt, cols, batch_rows):
        u_parts.append(users.add(_ids(batch.column(user_col), path, "user", user_col, rows, line_offset))
                       .astype(np.int32))
        i_parts.append(items.add(_ids(batch.column(item_col), path, "item", item_col, rows, line_offset))
                       .astype(np.int32))
        t_parts.append(_times(batch.column(time_col), path, time_col, rows, line_offset))
        rows += batch.num_rows
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
