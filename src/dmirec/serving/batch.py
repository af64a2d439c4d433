"""``dmirec recommend BUNDLE --input LOG --output candidates.parquet -n 200``: batch candidates.

Every user of an interaction log gets the top-n items the online service would return for the
user's whole log as history: the user's rows are ordered by timestamp (stable: ties keep file
order), ids not in the catalogue are dropped, and the last ``seq_len`` known items are the model
input; a user with no known item gets the most popular items (interest -1). Output: a Parquet
file with one row per candidate, columns ``user`` (str), ``rank`` (int32, 1-based), ``item``
(str, raw id), ``score`` (float32), ``interest`` (int32), users in input order.

Streaming and memory bound. CSV/TSV (plain or gzip), RecBole ``.inter`` and Parquet inputs are
read in record batches by the one streaming log reader (:func:`dmirec.data.logstream.iter_log`,
shared with ``dmirec prepare --stream``), never whole. They must have each user's rows contiguous ("grouped by user", as the shared datasets are); a
user whose rows reappear after another user's is an error naming the user and the row.
Completed users are scored ``chunk_users`` at a time and each chunk is written as its own
Parquet row group, so memory holds at most: the bundle, one input batch (``batch_rows`` rows),
the rows of the user in progress, ``chunk_users`` users' histories and ``chunk_users * n``
candidates, and 8 bytes per user seen (a 64-bit hash of each user id, to detect users that
reappear; a hash collision, probability about U^2 / 2^65, would be reported as a reappearing
user, never produce wrong output). ComiRec split folders are read whole by
:func:`dmirec.data.readers.read_log` (they are the small published splits); their bound is the
size of the three split files. The output is written to a temporary file (``.OUT.PID.tmp``) and
renamed when complete; the parts a killed run left are removed by the next run into the same
output, and a failed write (a full disk) names the output and the cause.
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..util.atomic import naming_write_errors, write_error
from ..data.logstream import LogBatch, LogInputError, iter_log
from .bundle import Bundle, load_bundle

OUTPUT_SCHEMA = pa.schema([
    ("user", pa.string()),
    ("rank", pa.int32()),
    ("item", pa.string()),
    ("score", pa.float32()),
    ("interest", pa.int32()),
])


# the streaming reader's error and batch, under the names this module has always exported
BatchInputError = LogInputError


# ----------------------------------------------------------------------------------------------
# grouping


class _SeenUsers:
    """Set of 64-bit user-id hashes as a few sorted runs merged geometrically (8 bytes per user)."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def contains(self, h: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(h), dtype=bool)
        for run in self.runs:
            pos = np.searchsorted(run, h)
            pos = np.minimum(pos, len(run) - 1)
            hit |= run[pos] == h
        return hit

    def add(self, h: np.ndarray) -> None:
        if len(h) == 0:
            return
        self.runs.append(np.sort(h))
        while len(self.runs) >= 2 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            b = self.runs.pop()
            a = self.runs.pop()
            self.runs.append(np.sort(np.concatenate([a, b]), kind="stable"))


def _hash(users: np.ndarray) -> np.ndarray:
    return pd.util.hash_array(np.asarray(users, dtype=object), categorize=False)


@dataclass
class _Pending:
    user: str
    row: int
    ids: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)

    def sequence(self) -> np.ndarray:
        ids = np.concatenate(self.ids)
        ts = np.concatenate(self.ts)
        order = np.argsort(ts, kind="stable")
        seq = ids[order]
        return seq[seq > 0]


def iter_user_sequences(batches: Iterator[LogBatch], item_index: pd.Index, path: Path
                        ) -> Iterator[tuple[str, np.ndarray, int, int]]:
    """Yield (user, time-ordered known item ids, rows, unknown rows) per user, in input order.

    Raises :class:`BatchInputError` when a user's rows are not contiguous.
    """
    seen = _SeenUsers()
    pending: _Pending | None = None
    for batch in batches:
        users = batch.users
        if len(users) == 0:
            continue
        ids = item_index.get_indexer(batch.items).astype(np.int64) + 1  # (R,) 0 = unknown
        change = np.flatnonzero(users[1:] != users[:-1]) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [len(users)]])
        cont = pending is not None and users[0] == pending.user
        new_starts = starts[1:] if cont else starts
        if len(new_starts):
            new_users = users[new_starts]
            h = _hash(new_users)
            again = seen.contains(h)
            uniq, first, counts = np.unique(h, return_index=True, return_counts=True)
            if again.any() or (counts > 1).any():
                if again.any():
                    j = int(np.argmax(again))
                else:
                    dup = uniq[counts > 1][0]
                    j = int(np.flatnonzero(h == dup)[1])
                raise BatchInputError(
                    f"{path}, data row {batch.first_row + int(new_starts[j])}: user {new_users[j]!r} appears again "
                    f"after its rows ended; batch recommendation streams the log and needs each user's rows "
                    f"contiguous (sort or group the log by user first)")
            seen.add(h)
        for g, (s, e) in enumerate(zip(starts, ends)):
            if g == 0 and cont:
                pending.ids.append(ids[s:e])
                pending.ts.append(batch.timestamps[s:e])
                continue
            if pending is not None:
                seq = pending.sequence()
                rows = sum(len(x) for x in pending.ids)
                yield pending.user, seq, rows, rows - len(seq)
            pending = _Pending(users[s], batch.first_row + int(s), [ids[s:e]], [batch.timestamps[s:e]])
    if pending is not None:
        seq = pending.sequence()
        rows = sum(len(x) for x in pending.ids)
        yield pending.user, seq, rows, rows - len(seq)


# ----------------------------------------------------------------------------------------------
# the batch job


def remove_stale_parts(output: Path) -> list[Path]:
    """Remove the temporary files (``.OUT.PID.tmp``) that killed runs into ``output`` left behind;
    a part whose process is still running is kept. Returns the removed paths."""
    removed = []
    for part in output.parent.glob(f".{glob.escape(output.name)}.*.tmp"):
        pid = part.name[len(output.name) + 2:-len(".tmp")]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
            removed.append(part)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def recommend_batch(bundle_dir: str | Path | Bundle, input: str | Path, output: str | Path, n: int = 200,
                    format: str | None = None, chunk_users: int = 4096, *, exclude_history: bool = False,
                    progress: bool = True, user_col: str | int = "user_id", item_col: str | int = "item_id",
                    time_col: str | int = "timestamp", sep: str | None = None,
                    batch_rows: int = 65_536) -> dict[str, Any]:
    """Write top-``n`` candidates for every user of ``input`` to the Parquet file ``output``.

    Returns statistics: users, rows, unknown_rows, fallback_users, candidates, row_groups,
    seconds, users_per_second, output.
    """
    n, chunk_users = int(n), int(chunk_users)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if chunk_users < 1:
        raise ValueError(f"chunk_users must be >= 1, got {chunk_users}")
    # without an index, exact search by faiss' flat index: several times faster than the torch
    # reference for thousands of users at a time (equal up to float rounding)
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else load_bundle(bundle_dir, exact_backend="faiss")
    input, output = Path(input), Path(output)
    item_index = pd.Index(bundle.item_ids)
    raw_items = np.asarray([""] + bundle.item_ids, dtype=object)  # (N + 1,) raw id by item id
    batches = iter_log(input, format, user_col=user_col, item_col=item_col, time_col=time_col, sep=sep,
                       batch_rows=batch_rows)
    stats = {"users": 0, "rows": 0, "unknown_rows": 0, "fallback_users": 0, "candidates": 0, "row_groups": 0}
    start = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(output)
    tmp = output.parent / f".{output.name}.{os.getpid()}.tmp"
    with naming_write_errors(output):
        writer = pq.ParquetWriter(tmp, OUTPUT_SCHEMA)
    bar = tqdm(unit="user", disable=not progress, desc="recommend", dynamic_ncols=True)
    users: list[str] = []
    seqs: list[np.ndarray] = []

    def flush() -> None:
        if not users:
            return
        res, fallback = bundle.recommend_ids(seqs, n, exclude_history)
        valid = res.ids > 0  # (B, n)
        counts = valid.sum(axis=1)  # (B,)
        rank = np.broadcast_to(np.arange(1, n + 1, dtype=np.int32), res.ids.shape)[valid]
        table = pa.table({
            "user": pa.array(np.repeat(np.asarray(users, dtype=object), counts), type=pa.string()),
            "rank": pa.array(rank, type=pa.int32()),
            "item": pa.array(raw_items[res.ids[valid]], type=pa.string()),
            "score": pa.array(res.scores[valid], type=pa.float32()),
            "interest": pa.array(res.interest[valid].astype(np.int32), type=pa.int32()),
        }, schema=OUTPUT_SCHEMA)
        try:
            writer.write_table(table, row_group_size=max(1, table.num_rows))
        except OSError as exc:  # e.g. a full disk: name the file being written
            raise write_error(output, exc) from None
        stats["candidates"] += table.num_rows
        stats["row_groups"] += 1
        stats["fallback_users"] += int(fallback.sum())
        bar.update(len(users))
        users.clear()
        seqs.clear()

    try:
        for user, seq, rows, unknown in iter_user_sequences(batches, item_index, input):
            users.append(user)
            seqs.append(seq)
            stats["users"] += 1
            stats["rows"] += rows
            stats["unknown_rows"] += unknown
            if len(users) >= chunk_users:
                flush()
        flush()
        with naming_write_errors(output):
            writer.close()
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        if tmp.exists():
            tmp.unlink()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    stats.update(seconds=round(seconds, 3), users_per_second=round(stats["users"] / seconds, 1) if seconds else None,
                 output=str(output), n=n, exclude_history=exclude_history)
    return stats


__all__ = ["OUTPUT_SCHEMA", "BatchInputError", "LogBatch", "iter_log", "iter_user_sequences",
           "recommend_batch"]
