"""The run directory: resolved config, metrics log and atomically written checkpoints.

Layout::

    RUN_DIR/config.yaml          the resolved configuration (every key)
    RUN_DIR/data.json            which prepared dataset the run used, with the fingerprint of its arrays
    RUN_DIR/metrics.jsonl        one JSON object per validation (and a final test line)
    RUN_DIR/checkpoints/last.pt  everything needed to resume (model, optimiser, RNG states, counters)
    RUN_DIR/checkpoints/best.pt  the model weights with the best validation Recall@50
    RUN_DIR/result.json          test metrics of the best checkpoint, written when the run ends

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the
target, so a kill at any moment leaves either the old or the new file, never a torn one.

A run is bound to what it was trained on and with: ``data.json`` holds the sha256 of each array
and id file of the prepared folder (:func:`data_fingerprint`), which resuming, evaluating,
exporting, reporting and comparing check (:func:`check_data`); every checkpoint holds the sha256
of its own contents (:func:`content_checksum`), checked whenever it is loaded, and the resolved
config it was written with, which ``config.yaml`` must still equal (:func:`check_config`).
This module knows nothing about training; :mod:`dmirec.serving.export` and :mod:`dmirec.evaluation.evaluate` use it
to load a trained model.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..util.atomic import atomic_write, atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)

from ..config import Config, check_keys_read, from_dict, upgrade_saved
from ..models import build_model
from .table_files import read_rows


CHECKSUM_KEY = "content_sha256"


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, renamed over it (:mod:`dmirec.util.atomic`).

    The checkpoint carries the sha256 of its contents (:func:`content_checksum`) under
    ``content_sha256``. A failed write (a full disk) is an ``OSError`` naming ``path`` and the
    cause; the previous file is left as it was."""
    obj = {**obj, CHECKSUM_KEY: content_checksum(obj)}
    atomic_write(path, lambda tmp: _torch_save(obj, tmp))


def _torch_save(obj: Any, tmp: str) -> None:
    """``torch.save`` through a Python file, so that a failed write is the OS's error (ENOSPC...),
    not the serializer's ``RuntimeError``."""
    with open(tmp, "wb") as fh:
        try:
            torch.save(obj, fh)
        except RuntimeError as exc:  # the writer's OSError, wrapped by torch: find the cause
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OSError):
                raise OSError(cause.errno, cause.strerror or str(cause)) from None
            if "unexpected pos" in str(exc) or "write" in str(exc).lower():
                raise OSError(errno.EIO, f"write failed ({str(exc).splitlines()[0][:160]})") from None
            raise


def content_checksum(obj: Any) -> str:
    """sha256 over a checkpoint's contents: every tensor's dtype, shape and bytes, every array's,
    and every other value, walked in order (so a changed byte anywhere in the weights, the
    optimiser state or the counters changes it)."""
    h = hashlib.sha256()
    _hash_into(h, obj)
    return h.hexdigest()


def _hash_into(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.is_meta:  # no data to hash
            h.update(f"M{obj.dtype}{tuple(obj.shape)}".encode())
            return
        t = obj.detach().cpu()
        if t.layout != torch.strided:
            t = t.to_dense()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype.str}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes() if obj.dtype != object else pickle.dumps(obj.tolist(), 4))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            _hash_into(h, k)
            _hash_into(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{type(obj).__name__}{len(obj)}".encode())
        for v in obj:
            _hash_into(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())
    else:
        h.update(b"P" + pickle.dumps(obj, 4))


def _verify_checksum(path: Path, ckpt: Any) -> None:
    """A checkpoint whose contents no longer match the checksum it was written with is refused
    (checkpoints written before checksums existed have none and load as before)."""
    if not isinstance(ckpt, dict) or CHECKSUM_KEY not in ckpt:
        return
    want = ckpt.pop(CHECKSUM_KEY)
    if content_checksum(ckpt) != want:
        raise RunError(f"{path}: checksum mismatch: the checkpoint's contents changed after it was written "
                       f"(a damaged file); restore it or retrain")


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
    _verify_checksum(path, ckpt)
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
    ref = {"path": str(Path(data_path).resolve()), "name": name, "num_items": num_items,
           "fingerprint": data_fingerprint(data_path)}
    atomic_write_text(run_dir / "data.json", json.dumps(ref, indent=2))


FINGERPRINT_FILES = tuple(f"{s}_{f}.npy" for s in ("train", "valid", "test")
                          for f in ("offsets", "items", "users", "timestamps")) + ("item_ids.txt", "user_ids.txt")


def data_fingerprint(data_path: str | Path) -> dict[str, Any]:
    """What a prepared folder holds: the sha256 of each array and id file, and how it was prepared
    (source log, core, seed: for messages)."""
    data_path = Path(data_path)
    files = {}
    for name in FINGERPRINT_FILES:
        path = data_path / name
        if path.exists():
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            files[name] = h.hexdigest()
    try:
        meta = json.loads((data_path / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    protocol = meta.get("protocol") or {}
    prepared = {"source": meta.get("source"), "core": protocol.get("core"), "seed": protocol.get("seed")}
    return {"sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(), "files": files,
            "prepared": prepared}


def data_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between two fingerprints, in words (None: the same data)."""
    if old.get("sha256") == new.get("sha256"):
        return None
    changed = sorted(k for k in set(old.get("files", {})) | set(new.get("files", {}))
                     if old.get("files", {}).get(k) != new.get("files", {}).get(k))
    was, now = old.get("prepared") or {}, new.get("prepared") or {}
    how = [f"{key} {was.get(key)!r} -> {now.get(key)!r}" for key in ("source", "core", "seed")
           if was.get(key) != now.get(key)]
    shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    return f"{shown} differ" + (f" (prepared with {'; '.join(how)})" if how else "")


def check_data(run_dir: str | Path, data_path: str | Path | None = None) -> None:
    """Refuse to use ``run_dir`` with a prepared folder that is not the one it was trained on (the
    folder was prepared again since, with another seed, log or core). Runs written before
    fingerprints existed are not checked."""
    run_dir = Path(run_dir)
    ref = read_data_ref(run_dir)
    old = ref.get("fingerprint")
    if not old:
        return
    data_path = Path(data_path or ref["path"])
    change = data_change(old, data_fingerprint(data_path))
    if change:
        raise RunError(f"{data_path}: the prepared data is not what {run_dir} was trained on: {change}; "
                       f"prepare it again as it was, or train a new run on it")


def check_config(run_dir: str | Path, cfg: Config, saved: dict[str, Any] | None, where: Path,
                 free: tuple[str, ...] = ()) -> None:
    """``config.yaml`` (``cfg``) must equal the resolved config the checkpoint ``where`` was written
    with (``saved``), except the keys in ``free``; the first difference is named. A checkpoint
    without a saved config (written before configs were kept in checkpoints) is not checked."""
    if not saved:
        return
    now = cfg.to_dict()
    for key, was in saved.items():
        if key in free or key not in now:
            continue
        is_ = now[key]
        if (list(is_) if isinstance(is_, tuple) else is_) != (list(was) if isinstance(was, tuple) else was):
            may = f"; only {', '.join(free)} may change, given on the command line" if free else ""
            raise RunError(f"{Path(run_dir) / 'config.yaml'}: key {key!r} is {is_!r} but {where} was trained with "
                           f"{was!r}; a run keeps the config it was trained with (restore {key}: {was!r}{may})")


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


# what evaluating or exporting a checkpoint checks against config.yaml: the keys that made the model
TRAINED_KEYS = ("model", "backbone", "embedding_dim", "num_interests", "seed", "lr", "batch_size", "num_negatives",
                "weight_decay")


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
    check_data(run_dir)
    ckpt_path = run_dir / "checkpoints" / f"{which}.pt"
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")  # built on the CPU, then moved
    saved = ckpt.get("config") if isinstance(ckpt, dict) else None
    if saved:  # evaluation-time keys (retrieval, repeat channel, neighbour rule...) may be changed
        check_config(run_dir, cfg, {k: saved[k] for k in TRAINED_KEYS if k in saved}, ckpt_path)
    if overrides:  # the model is loaded whole in this process: no longer a sharded one
        overrides = {str(k).replace("-", "_"): v for k, v in overrides.items()}
        new = cfg.replace(**({"sharded_embeddings": False} if cfg.sharded_embeddings else {}), **overrides)
        check_keys_read(new, dict.fromkeys(overrides, "override"), cfg)  # a key the run's model ignores: refused
        cfg = new
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
