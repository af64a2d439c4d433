"""Optional TensorBoard logging of a run's scalars (``--tensorboard=true``; extra ``tensorboard``).

The same numbers as ``metrics.jsonl``: every validation row's loss, throughput and metrics under
``valid/``, and the final test metrics under ``test/``, at the row's step. The event files go to
``RUN_DIR/tensorboard``; ``tensorboard --logdir RUN_DIR/tensorboard`` shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ConfigError


def open_writer(log_dir: str | Path):
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir``; a clear error when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's writer needs the `tensorboard` package
        raise ConfigError("config key 'tensorboard': logging needs the `tensorboard` package; install it with "
                          "pip install 'dmirec[tensorboard]' or run with --tensorboard=false") from None
    return SummaryWriter(log_dir=str(log_dir))


def log_row(writer, row: dict[str, Any], prefix: str) -> int:
    """Write every numeric entry of a metrics row (not ``step``/``split``) at ``row["step"]``; returns the count."""
    step = int(row["step"])
    count = 0
    for key, value in row.items():
        if key in ("step", "split", "best_step") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        writer.add_scalar(f"{prefix}/{key}", float(value), step)
        count += 1
    writer.flush()
    return count
