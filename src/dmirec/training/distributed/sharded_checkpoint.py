"""The table files of a sharded run's checkpoints: every rank writes its rows (and its optimiser's
per-row state) beside ``NAME.pt`` (:func:`save_table`), reads its row range back on ``--resume``
(:func:`load_table`), and stale files are removed once ``NAME.pt`` lists the new ones
(:func:`remove_stale`). The file format and the reader, which evaluation and export use to assemble
the whole table, are in :mod:`dmirec.runs.table_files`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from ...config import ConfigError
from ...runs.rundir import save_checkpoint
from ...runs.table_files import read_rows
from .sharded import ShardedItemTable


def save_table(table: ShardedItemTable, ckpt_dir: Path, name: str, step: int, moments: bool) -> dict[str, Any]:
    """Every rank writes its rows (and with ``moments`` its optimiser's per-row state) atomically; returns the
    manifest for ``NAME.pt``. A collective, ending when every rank's file is on disk."""
    def file(rank: int) -> str:
        return f"{name}.table.s{step}.r{rank}of{table.world}.pt"
    block = table.block.detach()  # saved as it is (no copy) unless it is a view into a larger storage
    if block.untyped_storage().nbytes() != block.numel() * block.element_size():
        block = block.clone()
    obj: dict[str, Any] = {"first": table.offset, "weight": block}
    if moments and table.optimizer is not None:
        obj.update(table.optimizer.state_rows())
    save_checkpoint(ckpt_dir / file(table.rank), obj)
    tdist.barrier()
    files = [(file(r), first, rows) for r, first, rows in sorted(table.layout, key=lambda x: x[1])]
    return {"key": "item_emb.weight", "rows": table.num_rows, "dim": table.dim, "step": step, "files": files}


def remove_stale(ckpt_dir: Path, name: str, manifest: dict[str, Any]) -> None:
    """Delete ``NAME.table.*`` files the manifest does not list (called after ``NAME.pt`` is written)."""
    keep = {f for f, _, _ in manifest["files"]}
    for path in Path(ckpt_dir).glob(f"{name}.table.*.pt"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def load_table(table: ShardedItemTable, ckpt_dir: Path, manifest: dict[str, Any], moments: bool = False) -> None:
    """This rank's rows (and with ``moments`` its optimiser's per-row state) from a checkpoint's table files."""
    if (manifest["rows"], manifest["dim"]) != (table.num_rows, table.dim):
        raise ConfigError(f"{ckpt_dir}: the checkpoint's table is {manifest['rows']} x {manifest['dim']}, "
                          f"this run's {table.num_rows} x {table.dim}")
    a, b = table.offset, table.offset + table.rows_here
    with torch.no_grad():
        table.block.copy_(read_rows(ckpt_dir, manifest, a, b))
    if moments and table.optimizer is not None:
        first = Path(ckpt_dir) / manifest["files"][0][0]
        saved = torch.load(first, map_location="cpu", mmap=True, weights_only=True)
        scalars = {k: v for k, v in saved.items() if not isinstance(v, torch.Tensor)}
        table.optimizer.load_rows(scalars, lambda field: read_rows(ckpt_dir, manifest, a, b, field))
