"""Readers for raw interaction logs: CSV (plain or gzip), Parquet, RecBole ``.inter`` and the
ComiRec/REMI split files.

Every log reader returns a :class:`pandas.DataFrame` with the columns ``user`` (str),
``item`` (str) and ``timestamp`` (int64 when every value is an integer, else float64, exactly as
written), one row per input row, in file order. Raw ids are kept exactly as written (``"007"``
stays ``"007"``). Nothing is dropped silently: a malformed row is an :class:`InputError` that
names the file and the 1-based line of the text file (header counted), or the 1-based row of a
Parquet file.

:func:`read_comirec_split` is different: it returns an already split dataset
(:class:`ComirecSplit`), which :func:`dmirec.data.prepare.prepare` converts without re-splitting.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import re
import shutil
import stat
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "InputError",
    "ComirecSplit",
    "read_csv",
    "read_parquet",
    "read_recbole",
    "read_comirec_split",
    "read_log",
    "infer_format",
    "FORMATS",
]

FORMATS = ("csv", "parquet", "recbole", "comirec")
COMIREC_SPLITS = ("train", "valid", "test")


class InputError(ValueError):
    """A raw input file is missing or malformed; the message names the file and the line."""


# --------------------------------------------------------------------------------------------
# low-level helpers


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


# a UTF-8 byte-order mark at the start of a file is read as such, never as part of the first field
ENCODING = "utf-8-sig"
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _open_text(path: Path):
    if _is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=ENCODING, newline="")
    return open(path, encoding=ENCODING, newline="")


def gzip_problem(path: Path) -> str | None:
    """Why a gzip file cannot be decompressed to its end (truncated, corrupt, bad CRC), or None."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except _GZIP_ERRORS as exc:
        return str(exc) or type(exc).__name__
    except OSError as exc:
        return str(exc)
    return None


def gzip_error(path: Path, why: str) -> "InputError":
    return InputError(f"{path}: corrupt or truncated gzip file ({why}); nothing was read from it")


def is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def seekable_path(path: Path, spool_dir: str | Path | None = None):
    """Yield a path that can be opened several times: ``path`` itself for a regular file, else a
    temporary copy of the whole stream (a pipe, ``/dev/stdin``, a FIFO), removed afterwards.

    The readers open a file more than once (first line, then the parser), which a pipe cannot
    serve: the second open would see only what the first did not consume.
    """
    path = Path(path)
    if not path.exists() or path.is_dir() or is_regular_file(path):
        yield path
        return
    fd, tmp = tempfile.mkstemp(prefix=".dmirec-stream.", suffix=".tmp", dir=spool_dir)
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 22)
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _rename_errors(exc: Exception, tmp: Path, path: Path) -> Exception:
    """The same error with the temporary copy's name replaced by the name the user gave."""
    if tmp == path:
        return exc
    return type(exc)(str(exc).replace(str(tmp), str(path)))


def sniff_format(path: Path, name: Path | None = None) -> str:
    """The format of a file from its first bytes (for a pipe, whose name says nothing): Parquet's
    ``PAR1`` magic, a tab-separated typed header (``user_id:token``) for RecBole, else text (csv);
    binary content that is neither is an error naming ``name`` (default ``path``)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:4] == b"PAR1":
        return "parquet"
    text = head
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                text = g.read(1 << 16)
        except _GZIP_ERRORS + (OSError,):
            return "csv"  # the reader names the gzip problem
    if b"\x00" in text:
        raise InputError(f"{name or path}: cannot tell the format from the content; give --format "
                         f"({', '.join(FORMATS)})")
    first = text.split(b"\n", 1)[0].decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r")
    fields = first.split("\t")
    if len(fields) > 1 and all(":" in f for f in fields):
        return "recbole"
    return "csv"


@contextlib.contextmanager
def spooled_input(path: Path, format: str | None = None, spool_dir: str | Path | None = None):
    """Yield (a path the readers can open several times, the format) for ``path``, which may be a pipe
    or ``/dev/stdin``: a pipe is copied to a temporary file first, and its format, when neither given
    nor told by the name, is sniffed from its content (:func:`sniff_format`). An InputError raised
    in the block names ``path``, not the copy."""
    path = Path(path)
    if not path.exists() or path.is_dir() or is_regular_file(path):
        yield path, format or infer_format(path)
        return
    with seekable_path(path, spool_dir) as tmp:
        fmt = format
        if fmt is None:
            try:
                fmt = infer_format(path)
            except InputError:
                fmt = sniff_format(tmp, path)
        try:
            yield tmp, fmt
        except InputError as exc:
            raise _rename_errors(exc, tmp, path) from None


RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def check_recbole_header(path: Path, first: str, used: list[str]) -> None:
    """Every field of a RecBole header is ``name:type`` with a RecBole type; the ``used`` fields
    (user, item, timestamp) hold one value each (not ``token_seq``/``float_seq``)."""
    for j, field in enumerate(first.split("\t"), start=1):
        name, _, kind = field.partition(":")
        if kind not in RECBOLE_TYPES:
            raise InputError(f"{path}, line 1: field {j} {field!r} has type {kind!r}, not a RecBole type "
                             f"({', '.join(RECBOLE_TYPES)})")
        if name in used and kind.endswith("_seq"):
            raise InputError(f"{path}, line 1: field {field!r} is a sequence type; the {name} column must "
                             f"hold one value per row (token or float)")


def check_parquet_types(path: Path, schema, cols: dict[str, str]) -> None:
    """Parquet columns hold one scalar per row: ids strings or numbers, timestamps numbers, text or
    datetimes; a list, struct or map column (``list<int64>``) is refused, named."""
    import pyarrow as pa

    for role, col in cols.items():
        kind = schema.field(col).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        scalar = (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_string(kind)
                  or pa.types.is_large_string(kind))
        if role == "timestamp":
            scalar = scalar or pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_decimal(kind)
        if not scalar:
            what = "ids must be strings or integers" if role != "timestamp" else \
                "timestamps must be numbers, text or datetimes"
            raise InputError(f"{path}: column {col!r} has type {kind}; {what}, one per row")


def _first_line(path: Path) -> str | None:
    """The first line without its line break, or None for an empty file."""
    try:
        with _open_text(path) as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    if line == "":
        return None
    return line.rstrip("\r\n")


def _split_line(line: str, sep: str, quoting: int) -> list[str]:
    if line == "":
        return []
    rows = list(csv.reader([line], delimiter=sep, quoting=quoting))
    return rows[0] if rows else []


def _raw_line(path: Path, line_no: int) -> str | None:
    """Line ``line_no`` (1-based) of the file without its line break (error paths only)."""
    with _open_text(path) as f:
        for n, line in enumerate(f, start=1):
            if n == line_no:
                return line.rstrip("\r\n")
    return None


def _first_bad_field_count(path: Path, sep: str, quoting: int, expected: int) -> tuple[int, int] | None:
    """(line, fields) of the first line whose field count differs from ``expected`` (error paths)."""
    with _open_text(path) as f:
        for n, line in enumerate(f, start=1):
            fields = _split_line(line.rstrip("\r\n"), sep, quoting)
            if len(fields) != expected:
                return n, len(fields)
    return None


def _bad_row_error(path: Path, line_no: int, sep: str, quoting: int, expected: int, what: str) -> InputError:
    """Explain why line ``line_no`` is bad: blank, wrong field count, or ``what``."""
    raw = _raw_line(path, line_no)
    if raw is not None:
        if raw.strip() == "":
            return InputError(f"{path}, line {line_no}: blank line (every line must hold one interaction)")
        n = len(_split_line(raw, sep, quoting))
        if n != expected:
            return InputError(f"{path}, line {line_no}: wrong number of fields: expected {expected}, found {n}")
    return InputError(f"{path}, line {line_no}: {what}")


def _sep_name(sep: str) -> str:
    return {",": "comma", "\t": "tab", ";": "semicolon", " ": "space"}.get(sep, repr(sep))


def _parse_timestamps(values: pd.Series, where) -> np.ndarray:
    """Numbers from strings, exactly as Python's int()/float() read them.

    ``where(i, value)`` builds the InputError for the first bad row ``i`` (0-based).
    """
    num = pd.to_numeric(values, errors="coerce")
    arr = num.to_numpy()
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and len(arr) and arr.max() > np.iinfo(np.int64).max:
            arr = arr.astype(np.float64)
        else:
            return arr.astype(np.int64)
    bad = ~np.isfinite(arr.astype(np.float64))
    if bad.any():
        i = int(np.argmax(bad))
        raise where(i, values.iloc[i])
    # pandas' fast float parser is not always correctly rounded; Python's float() is.
    if np.all(np.asarray(arr) == np.trunc(arr)) and np.abs(arr).max(initial=0) < 2**53:
        strs = values.to_numpy(dtype=object)
        try:
            return np.fromiter((int(s) for s in strs), dtype=np.int64, count=len(strs))
        except ValueError:
            pass  # e.g. "3.0" or "1e3": keep the float values
    strs = values.to_numpy(dtype=object)
    try:
        return np.fromiter((float(s) for s in strs), dtype=np.float64, count=len(strs))
    except ValueError:
        return np.asarray(arr, dtype=np.float64)


def _check_ids(frame, describe) -> None:
    """Raise ``describe(row, what)`` for the first empty user or item id (``frame``: a DataFrame or
    a mapping of ``user``/``item`` to arrays)."""
    for col in ("user", "item"):
        empty = np.asarray(frame[col] == "", dtype=bool)
        if empty.any():
            i = int(np.argmax(empty))
            raise describe(i, f"empty {col} id")


def _resolve_columns(fields: list[str], cols: dict[str, str | int], header: bool, path: Path) -> dict[str, int]:
    """Map the roles user/item/timestamp to field positions."""
    out: dict[str, int] = {}
    missing = []
    for role, col in cols.items():
        if isinstance(col, (int, np.integer)) and not isinstance(col, bool):
            if not 0 <= col < len(fields):
                raise InputError(f"{path}, line 1: {role} column position {col} is out of range "
                                 f"(the line has {len(fields)} fields)")
            out[role] = int(col)
        elif header:
            if col not in fields:
                missing.append(col)
            else:
                out[role] = fields.index(col)
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise InputError(f"{path}, line 1: missing column{'s' if len(missing) > 1 else ''} {names} "
                         f"(the header has: {', '.join(fields)}); {COLUMN_HINT}")
    return out


COLUMN_HINT = "choose columns with --user-col/--item-col/--time-col (user_col=/item_col=/time_col= in Python)"
# the default column names, and the other names they accept when a header lacks them
DEFAULT_COLUMNS = {"user": "user_id", "item": "item_id", "timestamp": "timestamp"}
COLUMN_ALIASES = {"user_id": ("user",), "item_id": ("item",), "timestamp": ()}


def resolve_aliases(fields: list[str], cols: dict[str, str | int]) -> dict[str, str | int]:
    """A default column name missing from the header becomes its alias when that one is there
    and every column is then found (``user,item,timestamp`` reads like ``user_id,item_id,timestamp``);
    explicit names stay as given."""
    out = dict(cols)
    for role, col in cols.items():
        if isinstance(col, str) and col == DEFAULT_COLUMNS.get(role) and col not in fields:
            out[role] = next((a for a in COLUMN_ALIASES[col] if a in fields), col)
    if any(isinstance(c, str) and c not in fields for c in out.values()):
        return dict(cols)  # only a header the aliases complete is read through them
    return out


# --------------------------------------------------------------------------------------------
# delimited text: CSV, TSV, RecBole


def locate_columns(path: Path, first: str, sep: str, quoting: int, cols: dict[str, str | int], header,
                   field_names=None) -> tuple[list[str], bool, dict[str, int]]:
    """(fields of line 1, whether line 1 is a header, field position of user/item/timestamp).

    ``header="infer"``: line 1 is a header when it holds one of the column names, or when its
    timestamp field is not a number (then the names must be there). Shared by :func:`read_csv`
    and the streaming reader of batch recommendation, so both read a log the same way.
    """
    raw_fields = _split_line(first, sep, quoting)
    fields = [field_names(f) for f in raw_fields] if field_names else raw_fields
    cols = resolve_aliases(fields, cols)
    if header == "infer":
        named = [c for c in cols.values() if isinstance(c, str)]
        if any(c in fields for c in named):
            has_header = True
        else:
            t = cols["timestamp"]
            pos = t if isinstance(t, int) and not isinstance(t, bool) else 2
            if pos >= len(fields):
                raise InputError(f"{path}, line 1: wrong number of fields: expected at least {pos + 1} "
                                 f"({_sep_name(sep)}-separated user, item, timestamp), found {len(fields)}")
            try:
                float(fields[pos])
                has_header = False
            except ValueError:
                has_header = True  # a header without the requested names: reported as missing columns
    elif header is True or header is False:
        has_header = header
    else:
        raise ValueError(f"header must be 'infer', True or False, not {header!r}")

    if has_header:
        positions = _resolve_columns(fields, cols, True, path)
    else:
        given = {r: c for r, c in cols.items()}
        defaults = {"user": 0, "item": 1, "timestamp": 2}
        for role in given:
            if not (isinstance(given[role], int) and not isinstance(given[role], bool)):
                given[role] = defaults[role]
        if max(given.values()) >= len(fields):
            raise InputError(f"{path}, line 1: wrong number of fields: expected at least "
                             f"{max(given.values()) + 1} ({_sep_name(sep)}-separated user, item, timestamp "
                             f"without a header), found {len(fields)}")
        positions = _resolve_columns(fields, given, False, path)

    return fields, has_header, positions


def _read_delimited(path: Path, sep: str, cols: dict[str, str | int], header, quoting: int,
                    field_names=None) -> pd.DataFrame:
    """Shared reader for delimited text logs.

    ``field_names`` (RecBole) turns a header field into its column name (``user_id:token`` ->
    ``user_id``). A gzip file that is corrupt or truncated is reported as such, never as the
    parse error its garbage would cause.
    """
    path = Path(path)
    _check_file(path)
    try:
        return _read_delimited_text(path, sep, cols, header, quoting, field_names)
    except (InputError, *_GZIP_ERRORS) as exc:
        if _is_gzip(path):
            why = gzip_problem(path)
            if why is not None:
                raise gzip_error(path, why) from None
        if isinstance(exc, InputError):
            raise
        raise gzip_error(path, str(exc) or type(exc).__name__) from None


def _read_delimited_text(path: Path, sep: str, cols: dict[str, str | int], header, quoting: int,
                         field_names=None) -> pd.DataFrame:
    _check_file(path)
    first = _first_line(path)
    if first is None:
        raise InputError(f"{path}: empty file (no header, no interactions)")
    if first.strip() == "":
        raise InputError(f"{path}, line 1: blank line (every line must hold one interaction)")
    fields, has_header, positions = locate_columns(path, first, sep, quoting, cols, header, field_names)
    n_fields = len(fields)
    first_data_line = 2 if has_header else 1
    tpos = positions["timestamp"]

    def read(time_dtype):
        dtype = {j: str for j in range(n_fields)}
        dtype[tpos] = time_dtype
        return pd.read_csv(
            path, sep=sep, header=0 if has_header else None, names=list(range(n_fields)),
            dtype=dtype, na_filter=False, skip_blank_lines=False, quoting=quoting,
            engine="c", compression="gzip" if _is_gzip(path) else None, encoding=ENCODING,
        )

    def describe(i: int, what: str) -> InputError:
        return _bad_row_error(path, first_data_line + i, sep, quoting, n_fields, what)

    try:
        try:
            with warnings.catch_warnings():  # pandas warns on the int64 cast it then refuses
                warnings.simplefilter("ignore", RuntimeWarning)
                df = read(np.int64)
            times = None
        except (ValueError, OverflowError) as e:
            if isinstance(e, pd.errors.ParserError):
                raise
            df = read(str)
            times = "parse"
    except pd.errors.ParserError:
        bad = _first_bad_field_count(path, sep, quoting, n_fields)
        if bad is not None:
            raise InputError(f"{path}, line {bad[0]}: wrong number of fields: expected {n_fields}, "
                             f"found {bad[1]}") from None
        raise InputError(f"{path}: cannot parse as {_sep_name(sep)}-separated text") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e})") from None
    except _GZIP_ERRORS as e:
        raise gzip_error(path, str(e) or type(e).__name__) from None

    # trailing blank lines (a file ending in an extra newline) are not interactions
    if len(df) and _is_blank_row(df, n_fields, len(df) - 1):
        k = len(df) - 1
        while k > 0 and _is_blank_row(df, n_fields, k - 1):
            k -= 1
        if _tail_lines_blank(path, first_data_line + k):
            df = df.iloc[:k]

    if len(df) == 0:
        raise InputError(f"{path}: no interactions" + (" after the header line" if has_header else ""))

    frame = pd.DataFrame({"user": df[positions["user"]].astype(str), "item": df[positions["item"]].astype(str)})
    frame = frame.reset_index(drop=True)
    _check_ids(frame, describe)
    if times is None:
        ts = df[tpos].to_numpy(dtype=np.int64)
    else:
        def where(i, value):
            return describe(i, f"timestamp {value!r} is not a number")
        ts = _parse_timestamps(df[tpos].reset_index(drop=True), where)
    frame["timestamp"] = ts
    return frame


def _is_blank_row(df: pd.DataFrame, n_fields: int, i: int) -> bool:
    return all(isinstance(v, str) and v == "" for v in (df[j].iloc[i] for j in range(n_fields)))


def _tail_lines_blank(path: Path, from_line: int) -> bool:
    with _open_text(path) as f:
        for n, line in enumerate(f, start=1):
            if n >= from_line and line.strip() != "":
                return False
    return True


def read_csv(path, user_col: str | int = "user_id", item_col: str | int = "item_id",
             time_col: str | int = "timestamp", header: str | bool = "infer", sep: str = ",") -> pd.DataFrame:
    """Read a delimited text log (``.csv``, ``.csv.gz``, ``.tsv``...) into user, item, timestamp.

    ``header="infer"``: the first line is a header when it contains one of the column names, or
    when its timestamp field (the third field) is not a number (then the names must be there).
    Without a header the columns are positional: user, item, timestamp (or the positions given
    as integers in ``user_col``/``item_col``/``time_col``). Gzip is detected from the content.
    """
    cols = {"user": user_col, "item": item_col, "timestamp": time_col}
    return _read_delimited(Path(path), sep, cols, header, csv.QUOTE_MINIMAL)


def _recbole_name(field: str) -> str:
    return field.split(":", 1)[0]


def read_recbole(path, user_col: str = "user_id", item_col: str = "item_id",
                 time_col: str = "timestamp") -> pd.DataFrame:
    """Read a RecBole atomic ``.inter`` file: tab-separated, typed header (``user_id:token``).

    Fields are picked by the name before the colon.
    """
    path = Path(path)
    cols = {"user": user_col, "item": item_col, "timestamp": time_col}
    _check_file(path)
    first = _first_line(path)
    if first is not None and first.strip() and ":" not in first:
        raise InputError(f"{path}, line 1: not a RecBole header (expected typed fields such as "
                         f"'user_id:token', found {first[:80]!r})")
    if first is not None and first.strip():
        check_recbole_header(path, first, [c for c in cols.values() if isinstance(c, str)])
    return _read_delimited(path, "\t", cols, True, csv.QUOTE_NONE, field_names=_recbole_name)


def read_parquet(path, user_col: str = "user_id", item_col: str = "item_id",
                 time_col: str = "timestamp") -> pd.DataFrame:
    """Read a Parquet log. Ids become strings (integer ids as their decimal digits); datetime
    timestamps become Unix seconds (int64 when whole, else float64). Errors name the 1-based row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    _check_file(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a Parquet file ({e})") from None
    cols = resolve_aliases(list(schema.names), {"user": user_col, "item": item_col, "timestamp": time_col})
    time_col = cols["timestamp"]
    missing = [c for c in cols.values() if c not in schema.names]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise InputError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {names} "
                         f"(the file has: {', '.join(schema.names)}); {COLUMN_HINT}")
    check_parquet_types(path, schema, cols)
    df = pd.read_parquet(path, columns=list(dict.fromkeys(cols.values())))
    if len(df) == 0:
        raise InputError(f"{path}: no interactions (0 rows)")

    def row_error(i: int, what: str) -> InputError:
        return InputError(f"{path}, row {i + 1}: {what}")

    frame = pd.DataFrame(index=range(len(df)))
    for role in ("user", "item"):
        col = df[cols[role]].reset_index(drop=True)
        isna = col.isna().to_numpy()
        if isna.any():
            raise row_error(int(np.argmax(isna)), f"missing {role} id (column {cols[role]!r})")
        if col.dtype.kind == "f":
            whole = np.all(col.to_numpy() == np.trunc(col.to_numpy()))
            values = col.astype(np.int64).astype(str) if whole else col.astype(str)
        else:
            values = col.astype(str)
        frame[role] = values.astype(str).to_numpy()
    _check_ids(frame, row_error)
    t = df[cols["timestamp"]].reset_index(drop=True)
    if t.isna().any():
        i = int(np.argmax(t.isna().to_numpy()))
        raise row_error(i, f"missing timestamp (column {time_col!r})")
    if pd.api.types.is_datetime64_any_dtype(t.dtype):
        if getattr(t.dt, "tz", None) is not None:
            t = t.dt.tz_convert("UTC").dt.tz_localize(None)
        ns = t.astype("datetime64[ns]").astype(np.int64).to_numpy()
        ts = ns // 10**9 if np.all(ns % 10**9 == 0) else ns / 1e9
    elif t.dtype.kind in "iu":
        ts = t.to_numpy().astype(np.int64)
    elif t.dtype.kind == "f":
        ts = t.to_numpy().astype(np.float64)
        bad = ~np.isfinite(ts)
        if bad.any():
            raise row_error(int(np.argmax(bad)), f"timestamp {ts[np.argmax(bad)]!r} is not a finite number")
    else:
        strs = t.astype(str)
        ts = _parse_timestamps(strs, lambda i, v: row_error(i, f"timestamp {v!r} is not a number"))
    frame["timestamp"] = ts
    return frame


# --------------------------------------------------------------------------------------------
# ComiRec/REMI split files


@dataclass
class ComirecSplit:
    """A dataset already split by ComiRec/REMI ``process/data.py``.

    ``splits[s]`` holds int64 columns ``user``, ``item``, ``index``, ``timestamp`` (new ids, file
    order); ``user_map`` / ``item_map`` hold ``raw`` (str) and ``new`` (int64) in file order, or
    are None when the map file is absent. ``files`` names each file read, for messages.
    """

    name: str
    folder: Path
    splits: dict[str, pd.DataFrame]
    user_map: pd.DataFrame | None
    item_map: pd.DataFrame | None
    files: dict[str, Path]


_TRAIN_RE = re.compile(r"^(?P<name>.+)_train\.txt$")


def _comirec_locate(path: Path, name: str | None) -> tuple[Path, str]:
    if path.is_dir():
        if name is None:
            names = sorted(m.group("name") for p in path.iterdir() if (m := _TRAIN_RE.match(p.name)))
            if not names:
                raise InputError(f"{path}: no NAME_train.txt file in this folder (ComiRec split format)")
            if len(names) > 1:
                raise InputError(f"{path}: several splits in this folder ({', '.join(names)}); pass name=")
            name = names[0]
        return path, name
    m = _TRAIN_RE.match(path.name)
    if m is None:
        raise InputError(f"{path}: expected a ComiRec NAME_train.txt file or the folder holding it")
    if name is not None and name != m.group("name"):
        raise InputError(f"{path}: name={name!r} does not match the file name")
    return path.parent, m.group("name")


def _read_comirec_rows(path: Path) -> pd.DataFrame:
    _check_file(path)
    names = ["user", "item", "index", "timestamp"]
    first = _first_line(path)
    if first is None:
        return pd.DataFrame({c: np.zeros(0, dtype=np.int64) for c in names})
    n = len(_split_line(first, ",", csv.QUOTE_NONE))
    if n != 4:
        raise InputError(f"{path}, line 1: wrong number of fields: expected 4 (user,item,index,timestamp), found {n}")
    try:
        try:  # fast path: well-formed integer files
            df = pd.read_csv(path, sep=",", header=None, names=names, dtype=np.int64, na_filter=False,
                             skip_blank_lines=False, quoting=csv.QUOTE_NONE, engine="c")
            return df
        except (ValueError, OverflowError) as e:
            if isinstance(e, pd.errors.ParserError):
                raise
        df = pd.read_csv(path, sep=",", header=None, names=names, dtype=str, na_filter=False,
                         skip_blank_lines=False, quoting=csv.QUOTE_NONE, engine="c")
    except pd.errors.ParserError:
        bad = _first_bad_field_count(path, ",", csv.QUOTE_NONE, 4)
        where = f", line {bad[0]}: wrong number of fields: expected 4, found {bad[1]}" if bad else ": cannot parse"
        raise InputError(f"{path}{where}") from None
    if len(df) and (df.iloc[-1] == "").all() and _tail_lines_blank(path, len(df)):
        k = len(df)
        while k > 0 and (df.iloc[k - 1] == "").all():
            k -= 1
        df = df.iloc[:k]
    out = {}
    for c in names:
        num = pd.to_numeric(df[c], errors="coerce")
        arr = num.to_numpy()
        bad = np.zeros(len(arr), dtype=bool) if arr.dtype.kind in "iu" else ~np.isfinite(arr.astype(float))
        if not bad.any() and arr.dtype.kind not in "iu":
            bad = arr != np.trunc(arr)
        if bad.any():
            i = int(np.argmax(bad))
            raise _bad_row_error(path, i + 1, ",", csv.QUOTE_NONE, 4,
                                 f"{c} {df[c].iloc[i]!r} is not an integer")
        out[c] = arr.astype(np.int64)
    return pd.DataFrame(out)


def _read_map(path: Path) -> pd.DataFrame:
    """A ``raw,new`` map file; the raw id is everything before the last comma."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    raws, news = [], []
    for n, line in enumerate(lines, start=1):
        line = line[:-1] if line.endswith("\r") else line
        raw, comma, new = line.rpartition(",")
        if not comma:
            raise InputError(f"{path}, line {n}: expected 'raw_id,new_id', found {line[:80]!r}")
        try:
            value = int(new)
        except ValueError:
            raise InputError(f"{path}, line {n}: new id {new!r} is not an integer") from None
        if raw == "":
            raise InputError(f"{path}, line {n}: empty raw id")
        raws.append(raw)
        news.append(value)
    return pd.DataFrame({"raw": pd.Series(raws, dtype=object), "new": np.asarray(news, dtype=np.int64)})


def read_comirec_split(folder_or_train_file, name: str | None = None) -> ComirecSplit:
    """Read ``NAME_train.txt``, ``NAME_valid.txt``, ``NAME_test.txt`` (``user,item,index,timestamp``,
    no header) and, when present, ``NAME_item_map.txt`` / ``NAME_user_map.txt`` (``raw_id,new_id``).

    ``folder_or_train_file``: the folder (``name`` picks the split when it holds several) or the
    ``NAME_train.txt`` file. The split is returned as given; nothing is re-split or re-ordered.
    """
    path = Path(folder_or_train_file)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    folder, name = _comirec_locate(path, name)
    files = {s: folder / f"{name}_{s}.txt" for s in COMIREC_SPLITS}
    splits = {s: _read_comirec_rows(p) for s, p in files.items()}
    if sum(len(df) for df in splits.values()) == 0:
        raise InputError(f"{files['train']}: no interactions in the {name} split files")
    maps = {}
    for kind in ("user", "item"):
        p = folder / f"{name}_{kind}_map.txt"
        files[f"{kind}_map"] = p
        maps[kind] = _read_map(p) if p.exists() else None
    return ComirecSplit(name=name, folder=folder, splits=splits, user_map=maps["user"],
                        item_map=maps["item"], files=files)


# --------------------------------------------------------------------------------------------
# dispatch


def infer_format(path) -> str:
    """``csv``, ``parquet``, ``recbole`` or ``comirec`` from the path; InputError when unclear."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir() or _TRAIN_RE.match(path.name):
        return "comirec"
    if name.endswith((".parquet", ".pq", ".parq")):
        return "parquet"
    if name.endswith(".inter"):
        return "recbole"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")):
        return "csv"
    raise InputError(f"{path}: cannot tell the format from the name; give format= one of {', '.join(FORMATS)}")


def read_log(path, format: str | None = None, **cols):
    """Read any supported input. ``format`` is inferred from the name when None
    (``.csv``/``.csv.gz``/``.tsv``: csv, ``.parquet``: parquet, ``.inter``: recbole, a folder or
    ``NAME_train.txt``: comirec). ``cols``: ``user_col``, ``item_col``, ``time_col`` (and for csv
    ``header``, ``sep``; for comirec ``name``).

    Returns a DataFrame (user, item, timestamp), or a :class:`ComirecSplit` for ``comirec``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir() and not is_regular_file(path):
        # a pipe or /dev/stdin: read from a temporary copy (its format sniffed when not given)
        with spooled_input(path, format) as (tmp, fmt):
            return read_log(tmp, fmt, **cols)
    fmt = format or infer_format(path)
    if fmt == "csv":
        if "sep" not in cols and path.name.lower().endswith((".tsv", ".tsv.gz")):
            cols["sep"] = "\t"
        return read_csv(path, **cols)
    if fmt == "parquet":
        return read_parquet(path, **cols)
    if fmt == "recbole":
        return read_recbole(path, **cols)
    if fmt == "comirec":
        unknown = set(cols) - {"name"}
        if unknown:
            raise TypeError(f"read_comirec_split takes no {', '.join(sorted(unknown))}")
        return read_comirec_split(path, **cols)
    raise InputError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
