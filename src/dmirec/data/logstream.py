"""The one streaming reader of interaction logs: record batches of (user, item, timestamp).

:func:`iter_log` reads CSV/TSV (plain or gzip), RecBole ``.inter`` and Parquet logs in batches
of at most ``batch_rows`` rows with pyarrow (``pyarrow.csv.open_csv`` /
``ParquetFile.iter_batches``), never whole. A text log's header is guessed, its columns found
and aliased (``user,item,timestamp`` reads like ``user_id,item_id,timestamp``) by the same
functions as :func:`dmirec.data.readers.read_log` (``locate_columns``, ``resolve_aliases``);
ids are kept as written (strings; integer Parquet ids as their digits), timestamps are parsed
exactly as ``read_log`` parses them (int64 when a batch's values are all integers, else
float64; Parquet datetimes become Unix seconds). A missing or empty id, a timestamp that is not
a number, a corrupt gzip stream or a malformed line is an :class:`LogInputError` naming the file
and the line (text, header counted) or the row (Parquet). A pipe or ``/dev/stdin`` is spooled
to a temporary file first. ComiRec split folders are read whole (the small published splits).

Used by batch recommendation (:mod:`dmirec.serving.batch`) and the streaming prepare
(:mod:`dmirec.data.stream_prepare`). ``dmirec prepare`` without ``--stream`` keeps its in-memory
reader, :func:`dmirec.data.readers.read_log` (pandas): it decides over the whole column what a
batch cannot (a Parquet float id column is written as integers only when every value is whole;
trailing blank lines end the file, a blank line inside it is an error naming it), and its
output is the prepared folder checked byte for byte against the published ComiRec files. The
streaming prepare takes only the logs on which both readers agree (tested: identical folders).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from . import readers as _readers
from .readers import InputError

__all__ = ["LogInputError", "LogBatch", "iter_log"]


class LogInputError(InputError):
    """The interaction log cannot be streamed; the message names the file and the line or row."""


@dataclass
class LogBatch:
    users: np.ndarray  # (R,) object array of str
    items: np.ndarray  # (R,) object array of str
    timestamps: np.ndarray  # (R,) int64 or float64
    first_row: int  # 1-based data row number of the first row (header not counted)
    line_offset: int | None = None  # text logs: file line = data row + line_offset; None: Parquet rows

    def where(self, i: int) -> str:
        """``line N`` (text) or ``row N`` (Parquet) of the batch's row ``i`` (0-based)."""
        return where(self.first_row + i, self.line_offset)


def where(row: int, line_offset: int | None) -> str:
    return f"row {row}" if line_offset is None else f"line {row + line_offset}"


def _first_line(path: Path) -> str:
    try:
        return _readers._first_line(path) or ""
    except _readers.InputError as exc:
        if _readers._is_gzip(path):
            raise LogInputError(str(_readers.gzip_error(path, str(exc)))) from None
        raise LogInputError(str(exc)) from None


def _stream_error(path: Path, at: str, exc: Exception) -> LogInputError:
    """A parse or read error of the streamed log, naming the file (and the gzip problem, if any)."""
    if _readers._is_gzip(path):
        why = _readers.gzip_problem(path)
        if why is not None:
            return LogInputError(str(_readers.gzip_error(path, why)))
    return LogInputError(f"{path}: cannot read near {at} ({exc})")


def _parse_error(path: Path, sep: str, quoting: int, fields: int, near: str, exc: Exception) -> LogInputError:
    """A parse error of a text log at its true line: pyarrow reports a block's error with the
    block's start, so the file is scanned for the first line with the wrong number of fields
    (the in-memory reader's message); else the row pyarrow names, else the block's start."""
    if _readers._is_gzip(path) and _readers.gzip_problem(path) is not None:
        return _stream_error(path, near, exc)
    try:
        bad = _readers._first_bad_field_count(path, sep, quoting, fields)
    except (OSError, UnicodeDecodeError, EOFError):
        bad = None
    if bad is not None:
        return LogInputError(str(_readers._bad_row_error(path, bad[0], sep, quoting, fields, "cannot parse")))
    row = re.search(r"Row #(\d+)", str(exc))
    if row is not None:
        return LogInputError(f"{path}, line {row.group(1)}: cannot parse ({str(exc).splitlines()[0][:200]})")
    return _stream_error(path, near, exc)


def _parse_timestamps(values: np.ndarray, path: Path, batch: LogBatch) -> np.ndarray:
    """Timestamps from strings exactly as :func:`dmirec.data.readers.read_csv` parses them."""
    def bad(i: int, value) -> LogInputError:
        return LogInputError(f"{path}, {batch.where(i)}: timestamp {value!r} is not a number")

    return _readers._parse_timestamps(pd.Series(values, dtype=object), bad)


def _check_ids(batch: LogBatch, path: Path) -> None:
    def describe(i: int, what: str) -> LogInputError:
        return LogInputError(f"{path}, {batch.where(i)}: missing or {what}")

    _readers._check_ids({"user": batch.users, "item": batch.items}, describe)


def _iter_delimited(path: Path, sep: str, cols: dict[str, str | int], recbole: bool, header,
                    batch_rows: int) -> Iterator[LogBatch]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    first = _first_line(path)
    if first.strip() == "":
        raise LogInputError(f"{path}: empty file or blank first line")
    quoting = csv.QUOTE_NONE if recbole else csv.QUOTE_MINIMAL
    field_names = _readers._recbole_name if recbole else None
    try:  # the header guess and column positions of read_csv
        if recbole:
            _readers.check_recbole_header(path, first, [c for c in cols.values() if isinstance(c, str)])
        fields, has_header, pos = _readers.locate_columns(path, first, sep, quoting, cols,
                                                          True if recbole else header, field_names)
    except _readers.InputError as exc:
        raise LogInputError(str(exc)) from None
    offset = 1 if has_header else 0
    column_names = [f"c{j}" for j in range(len(fields))]
    want = {r: f"c{p}" for r, p in pos.items()}
    block = max(1 << 22, min(48 * batch_rows, 1 << 26))  # bytes per pyarrow block: about batch_rows rows
    read_opts = pacsv.ReadOptions(column_names=column_names, skip_rows=offset, block_size=block)
    parse_opts = pacsv.ParseOptions(delimiter=sep, quote_char=False if recbole else '"')
    conv_opts = pacsv.ConvertOptions(column_types={c: pa.string() for c in column_names},
                                     include_columns=list(dict.fromkeys(want.values())),
                                     strings_can_be_null=False)
    stream = pa.input_stream(str(path), compression="gzip" if _readers._is_gzip(path) else None)
    try:
        reader = pacsv.open_csv(stream, read_options=read_opts, parse_options=parse_opts,
                                convert_options=conv_opts)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _parse_error(path, sep, quoting, len(fields), where(1, offset), exc) from None
    row = 1
    while True:
        try:
            rb = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError) as exc:
            raise _parse_error(path, sep, quoting, len(fields), where(row, offset), exc) from None
        for start in range(0, rb.num_rows, batch_rows):
            part = rb.slice(start, batch_rows)
            batch = LogBatch(np.zeros(0), np.zeros(0), np.zeros(0), row, offset)
            for role in ("user", "item"):
                column = part.column(want[role])
                empty = pc.equal(pc.utf8_length(column), 0).to_numpy(zero_copy_only=False)  # (R,)
                if empty.any():
                    i = int(np.argmax(empty))
                    raise LogInputError(f"{path}, {batch.where(i)}: missing or empty {role} id")
            batch.users = part.column(want["user"]).to_numpy(zero_copy_only=False).astype(object)
            batch.items = part.column(want["item"]).to_numpy(zero_copy_only=False).astype(object)
            batch.timestamps = _text_times(part.column(want["timestamp"]), path, batch)
            yield batch
            row += part.num_rows


def _text_times(column, path: Path, batch: LogBatch) -> np.ndarray:
    """A text column of timestamps: int64 straight from pyarrow when every value is a plain integer
    (what pandas' to_numeric reads as integers too), else parsed as read_csv parses them."""
    import pyarrow as pa

    try:
        return column.cast(pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raw = column.to_numpy(zero_copy_only=False).astype(object)
        return _parse_timestamps(raw, path, batch)


def _arrow_ids(col) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_floating(col.type):
        vals = col.to_numpy(zero_copy_only=False)
        if np.all(vals == np.trunc(vals)):
            return vals.astype(np.int64).astype(str).astype(object)
        return vals.astype(str).astype(object)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = col.cast(pa.string())
    return col.to_numpy(zero_copy_only=False).astype(object)


def _arrow_times(col) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_timestamp(col.type):
        ns = col.cast(pa.timestamp("ns")).cast(pa.int64()).to_numpy(zero_copy_only=False)
        return ns // 10**9 if np.all(ns % 10**9 == 0) else ns / 1e9
    if pa.types.is_integer(col.type):
        return col.to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_floating(col.type):
        return col.to_numpy(zero_copy_only=False).astype(np.float64)
    return col.cast(pa.string()).to_numpy(zero_copy_only=False).astype(object)


def parquet_columns(path: Path, cols: dict[str, str]):
    """(the open ``ParquetFile``, the column name of each role after aliasing); errors name the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise LogInputError(f"{path}: not a Parquet file ({exc})") from None
    cols = _readers.resolve_aliases(list(pf.schema_arrow.names), cols)
    missing = [c for c in cols.values() if c not in pf.schema_arrow.names]
    if missing:
        raise LogInputError(f"{path}: missing column(s) {', '.join(map(repr, missing))} "
                            f"(the file has: {', '.join(pf.schema_arrow.names)}); {_readers.COLUMN_HINT}")
    try:
        _readers.check_parquet_types(path, pf.schema_arrow, cols)
    except _readers.InputError as exc:
        raise LogInputError(str(exc)) from None
    return pf, cols


def _iter_parquet(path: Path, cols: dict[str, str], batch_rows: int) -> Iterator[LogBatch]:
    pf, cols = parquet_columns(path, cols)
    row = 1
    for rb in pf.iter_batches(batch_size=batch_rows, columns=list(dict.fromkeys(cols.values()))):
        for role in ("user", "item", "timestamp"):
            column = rb.column(cols[role])
            if column.null_count:
                i = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
                what = "missing timestamp" if role == "timestamp" else f"missing or empty {role} id"
                raise LogInputError(f"{path}, {where(row + i, None)}: {what} (column {cols[role]!r})")
        batch = LogBatch(_arrow_ids(rb.column(cols["user"])), _arrow_ids(rb.column(cols["item"])),
                         np.zeros(0), row, None)
        _check_ids(batch, path)
        ts = _arrow_times(rb.column(cols["timestamp"]))
        if ts.dtype == object:
            ts = _parse_timestamps(ts, path, batch)
        elif ts.dtype.kind == "f" and not np.isfinite(ts).all():
            i = int(np.argmax(~np.isfinite(ts)))
            raise LogInputError(f"{path}, {batch.where(i)}: timestamp {float(ts[i])!r} is not a finite number")
        batch.timestamps = ts
        yield batch
        row += rb.num_rows


def _iter_comirec(path: Path, batch_rows: int) -> Iterator[LogBatch]:
    split = _readers.read_log(path, format="comirec")
    frames = [split.splits[s] for s in ("train", "valid", "test") if len(split.splits[s])]
    df = pd.concat(frames, ignore_index=True)

    def mapped(values: np.ndarray, table: pd.DataFrame | None) -> np.ndarray:
        if table is None:
            return values.astype(str).astype(object)
        lookup = pd.Series(table["raw"].to_numpy(), index=table["new"].to_numpy())
        out = lookup.reindex(values).to_numpy(dtype=object)
        missing = pd.isna(out)
        out[missing] = values[missing].astype(str)
        return out

    users = mapped(df["user"].to_numpy(), split.user_map)
    items = mapped(df["item"].to_numpy(), split.item_map)
    ts = df["timestamp"].to_numpy(dtype=np.int64)
    for s in range(0, len(df), batch_rows):
        yield LogBatch(users[s:s + batch_rows], items[s:s + batch_rows], ts[s:s + batch_rows], s + 1, None)


def iter_log(path: str | Path, format: str | None = None, *, user_col: str | int = "user_id",
             item_col: str | int = "item_id", time_col: str | int = "timestamp", sep: str | None = None,
             header: str | bool = "infer", batch_rows: int = 65_536) -> Iterator[LogBatch]:
    """Stream an interaction log as :class:`LogBatch` es (formats and columns as
    :func:`dmirec.data.readers.read_log`; ``header`` and ``sep`` for csv only)."""
    path = Path(path)
    if not path.exists():
        raise LogInputError(f"{path}: no such file")
    fmt = format or _readers.infer_format(path)
    if fmt != "comirec" and not path.is_dir() and not _readers.is_regular_file(path):
        return _iter_spooled(path, fmt, user_col=user_col, item_col=item_col, time_col=time_col, sep=sep,
                             header=header, batch_rows=batch_rows)
    if fmt != "comirec" and path.is_dir():
        raise LogInputError(f"{path}: is a folder, expected a file")
    cols = {"user": user_col, "item": item_col, "timestamp": time_col}
    if fmt == "csv":
        if sep is None:
            sep = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
        return _iter_delimited(path, sep, cols, False, header, batch_rows)
    if fmt == "recbole":
        return _iter_delimited(path, "\t", cols, True, True, batch_rows)
    if fmt == "parquet":
        return _iter_parquet(path, cols, batch_rows)
    if fmt == "comirec":
        return _iter_comirec(path, batch_rows)
    raise LogInputError(f"{path}: unknown format {fmt!r}; expected csv, parquet, recbole or comirec")


def _iter_spooled(path: Path, fmt: str, **kw) -> Iterator[LogBatch]:
    """A pipe or /dev/stdin: stream a temporary copy on disk (the reader opens the file twice)."""
    with _readers.seekable_path(path) as tmp:
        try:
            yield from iter_log(tmp, fmt, **kw)
        except LogInputError as exc:
            raise _readers._rename_errors(exc, tmp, path) from None
