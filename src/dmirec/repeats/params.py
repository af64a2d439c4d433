"""The repeat channel's fitted settings: ``RUN_DIR/repeat.json`` (written by ``dmirec fit-repeat``,
:mod:`dmirec.evaluation.repeat_fit`), read back onto a run's config by evaluation and export
(:func:`with_repeat_params`). Only the file's ``params`` table is applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..util.jsonfile import read_json
from ..config import Config, ConfigError

REPEAT_FILE = "repeat.json"
PARAM_KEYS = ("repeat_channel", "repeat_weight", "repeat_recency", "repeat_bias", "repeat_decay",
              "repeat_ref_rank")


def read_repeat_file(path: str | Path) -> dict[str, Any]:
    """The ``params`` table of a repeat.json file, checked against the config's repeat keys."""
    path = Path(path)
    data = read_json(path, ConfigError, missing="no such repeat parameter file (write one with `dmirec fit-repeat`)")
    params = data.get("params") if isinstance(data, dict) else None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: no \"params\" table of repeat_* config keys")
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown repeat parameter(s) {unknown}; expected some of {list(PARAM_KEYS)}")
    return params


def with_repeat_params(cfg: Config, run_dir: str | Path | None = None, path: str | Path | None = None) -> Config:
    """``cfg`` with the repeat parameters of ``path``, else of ``RUN_DIR/repeat.json`` when it exists."""
    if path is None and run_dir is not None and (Path(run_dir) / REPEAT_FILE).exists():
        path = Path(run_dir) / REPEAT_FILE
    if path is None:
        return cfg
    params = read_repeat_file(path)
    try:
        return cfg.replace(**params)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
