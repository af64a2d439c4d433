"""The run directory: resolved config, metrics log and atomically written checkpoints.

Layout::

    RUN_DIR/config.yaml          the resolved configuration (every key)
    RUN_DIR/data.json            which prepared dataset the run used
    RUN_DIR/metrics.jsonl        one JSON object per validation (and a final test line)
    RUN_DIR/checkpoints/last.pt  everything needed to resume (model, optimiser, RNG states, counters)
    RUN_DIR/checkpoints/best.pt  the model weights with the best validation Recall@50
    RUN_DIR/result.json          test metrics of the best checkpoint, written when the run ends

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the
target, so a kill at any moment leaves either the old or the new file, never a torn one.
This module knows nothing about training; :mod:`dmirec.serving.export` and :mod:`dmirec.evaluation.evaluate` use it
to load a trained model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from ..util.atomic import atomic_write, atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)

from ..config import Config, from_dict, upgrade_saved
from ..models import build_model
from .table_files import read_rows


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, renamed over it (:mod:`dmirec.util.atomic`)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class RunError(ValueError):
    """A run directory is busy, unfinished or damaged; the message names the run and the file."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", assemble: bool = True
                    ) -> dict[str, Any]:
    """A checkpoint file. A sharded run's checkpoint keeps its item table in per-rank files beside it
    (``table_shards``, :mod:`dmirec.training.distributed.sharded`): ``assemble`` puts the whole table into
    ``ckpt["model"]`` as an unsharded run has it (``False``: leave the rows in their files)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RunError(f"{path}: cannot read the checkpoint, it is truncated or corrupt ({why})") from None
    manifest = ckpt.get("table_shards") if isinstance(ckpt, dict) else None
    if assemble and manifest is not None:
        try:
            ckpt["model"][manifest["key"]] = read_rows(path.parent, manifest, 0, manifest["rows"])
        except (FileNotFoundError, KeyError, RuntimeError, OSError) as exc:
            raise RunError(f"{path}: cannot read its item-table files ({str(exc).splitlines()[0][:200]})") from None
    return ckpt


# ----------------------------------------------------------------------------------------------
# one writer per run directory


LOCK_FILE = ".lock"


def _lock_holder(run_dir: Path) -> str:
    try:
        return (Path(run_dir) / LOCK_FILE).read_text().strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def run_lock(run_dir: str | Path):
    """Hold an exclusive lock on ``run_dir`` (``RUN_DIR/.lock``, ``flock``) while training it.

    A second process (or a second call in this one) that tries to train or resume the same run
    gets a :class:`RunError` naming the holder's pid. The kernel drops the lock when the holder
    exits, however it exits, so a killed run never leaves a stale lock. A folder this call had
    to create, and that holds nothing else when the body fails, is removed again.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise RunError(f"{run_dir}: another process (pid {_lock_holder(run_dir)}) is training this run; "
                       f"wait for it to finish or stop it before resuming") from None
    ok = False
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        for leftover in [*run_dir.glob(".*.tmp"), *(run_dir / "checkpoints").glob(".*.tmp")]:
            leftover.unlink(missing_ok=True)  # a kill during an atomic write leaves its temporary file
        yield
        ok = True
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()
        if not ok and created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            shutil.rmtree(run_dir, ignore_errors=True)


def training_pid(run_dir: str | Path) -> str | None:
    """The pid training ``run_dir`` now (its lock is held), or None."""
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return None
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _lock_holder(run_dir)
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return None


def unfinished_note(run_dir: str | Path) -> str | None:
    """A one-line note when ``run_dir`` is still training or never finished (no result.json), else None."""
    run_dir = Path(run_dir)
    pid = training_pid(run_dir)
    if pid is not None:
        return f"{run_dir} is still training (pid {pid}): using its checkpoint as it is now"
    if not (run_dir / "result.json").exists():
        return (f"{run_dir} is unfinished (no result.json; killed or still to resume with "
                f"`dmirec train --resume {run_dir}`): using its checkpoint as it is now")
    return None


def write_config(run_dir: Path, cfg: Config) -> None:
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    return from_dict(upgrade_saved(yaml.safe_load(path.read_text())), source=str(path))


def write_data_ref(run_dir: Path, data_path: Path, name: str, num_items: int) -> None:
    ref = {"path": str(Path(data_path).resolve()), "name": name, "num_items": num_items}
    atomic_write_text(run_dir / "data.json", json.dumps(ref, indent=2))


def read_data_ref(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "data.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no data.json")
    return json.loads(path.read_text())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rewrite_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def load_trained_model(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu",
                       overrides: dict[str, Any] | None = None):
    """Rebuild the model of a run and load its ``best`` (or ``last``) weights. Returns (model, cfg).

    ``overrides`` are evaluation-time config changes (e.g. ``{"neighbour_alpha": 0.5}`` or
    ``{"fusion_weight": 0.0}``); weights must still fit. An interest bank the checkpoint does not
    hold (the neighbour rule asked for after training) is left empty: fill it with
    :func:`dmirec.collab.neighbours.fill_bank` (``dmirec.evaluation.evaluate.load_run`` does).
    """
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    if overrides:  # the model is loaded whole in this process: no longer a sharded one
        cfg = cfg.replace(**({"sharded_embeddings": False} if cfg.sharded_embeddings else {}), **overrides)
    ckpt = load_checkpoint(run_dir / "checkpoints" / f"{which}.pt", map_location="cpu")  # built on the CPU, then moved
    ref = read_data_ref(run_dir)
    popularity = ckpt.get("popularity")
    model = build_model(cfg, int(ref["num_items"]), None if popularity is None else popularity.numpy())
    load_weights(model, ckpt["model"])
    model.to(device).eval()
    return model, cfg


def load_weights(model: torch.nn.Module, state: dict[str, Any]) -> None:
    """``load_state_dict``, except that interest-bank entries may be missing or unused (the bank is
    data the model may or may not carry, not architecture)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing + unexpected if not (k == "bank.vectors" or k == "bank.owners")]
    if bad:
        model.load_state_dict(state)  # raises the usual, complete error
