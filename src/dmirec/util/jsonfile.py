"""Reading a JSON file written by dmirec, with one-line errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, error: type[Exception], *, missing: str | None = None, hint: str = "") -> Any:
    """The parsed content of ``path``. A file that is not UTF-8 JSON raises ``error("PATH: not valid
    JSON (reason)HINT")``; an absent one ``error("PATH: MISSING")`` when ``missing`` is given (else
    ``FileNotFoundError`` passes through for the caller to handle)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing is None:
            raise
        raise error(f"{path}: {missing}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc}){hint}") from None
