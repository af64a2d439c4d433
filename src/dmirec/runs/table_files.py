"""The table files of a sharded run's checkpoint, and :func:`read_rows`, which reads any row range
of them (written by :mod:`dmirec.training.distributed.sharded_checkpoint`; read here so that
:func:`dmirec.runs.rundir.load_checkpoint` can assemble the whole table without training code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# A checkpoint NAME.pt of a sharded run holds ``table_shards``, a manifest:
#   {"key": "item_emb.weight", "rows": N + 1, "dim": D, "step": S,
#    "files": [(file name, first row, rows), ...] in row order}
# and each rank's rows are in NAME.table.sS.rRofP.pt beside it: {"first", "weight" (rows, D)} plus,
# in ``last``, the optimiser's per-row state: Adam's "adam_step", "exp_avg", "exp_avg_sq", or the
# fused row-wise Adagrad's "adagrad_momentum" (rows,).


def read_rows(ckpt_dir: Path, manifest: dict[str, Any], start: int, stop: int, field: str = "weight"
              ) -> torch.Tensor:
    """Rows ``start:stop`` of the table (or of an Adam moment) from the table files of a checkpoint,
    reading only those rows (the files are memory-mapped): any P can read any P's files."""
    out: torch.Tensor | None = None  # (stop - start, *the field's trailing shape)
    for fname, first, rows in manifest["files"]:
        lo, hi = max(start, first), min(stop, first + rows)
        if lo >= hi:
            continue
        path = Path(ckpt_dir) / fname
        try:
            part = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: a table file of this checkpoint is missing") from None
        if field not in part:
            raise KeyError(f"{path}: has no {field!r} (a best checkpoint keeps no optimiser state)")
        piece = part[field][lo - first:hi - first]
        if out is None:
            out = torch.empty((stop - start, *piece.shape[1:]), dtype=piece.dtype)
        out[lo - start:hi - start] = piece
        del part, piece
    return out if out is not None else torch.empty(0, manifest["dim"])
