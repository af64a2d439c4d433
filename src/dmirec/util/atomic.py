"""Atomic file writes, the one implementation the package uses (run directories, bundles, indexes).

A write goes to a temporary file in the target's folder, is flushed to disk, gets the permissions a
plain ``open()`` would give it, and is renamed over the target: a kill at any moment leaves the old
file or the new one, never a torn one. A failed write removes its temporary file, and an OS error
(a full disk, a file-size limit, no permission) is re-raised as one line naming the target and the
cause (:func:`write_error`). :class:`PyWriter` routes numpy's writes through Python's file layer, so
that a failed write carries the OS's reason instead of numpy's "N requested and M written".
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable


def write_error(path: str | Path, exc: BaseException) -> OSError:
    """One line naming ``path`` and the cause: ``PATH: cannot write (No space left on device)``;
    the errno is kept (``OSError.errno``) but not printed."""
    if isinstance(exc, OSError) and exc.errno is not None:
        cause = os.strerror(exc.errno) if exc.errno in errno.errorcode else (exc.strerror or str(exc))
    else:
        cause = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    err = OSError(f"{path}: cannot write ({cause})")
    err.errno = getattr(exc, "errno", None)
    err.named = True  # already says which file: outer handlers leave it as it is
    return err


@contextlib.contextmanager
def naming_write_errors(path: str | Path):
    """Re-raise an ``OSError`` from the body as :func:`write_error` naming ``path`` (errors that
    already name their file are left as they are, unless they name a temporary file)."""
    try:
        yield
    except OSError as exc:
        named = exc.filename and not str(exc.filename).endswith(".tmp")
        if named or getattr(exc, "named", False):
            raise
        raise write_error(path, exc) from None


class PyWriter:
    """A file object numpy cannot see through: ``np.save(PyWriter(fh), a)`` writes with ``fh.write``
    (a full disk is then an ``OSError`` with its errno, not ``tofile``'s bare message)."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data) -> int:
        return self._fh.write(data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path: Path, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp result (mode 0600/0700) the permissions a plain open() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` fills a temporary file, which then replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        make_readable(Path(tmp))
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and (not exc.filename or str(exc.filename) == tmp):  # e.g. a full disk
            if not getattr(exc, "named", False):
                raise write_error(path, exc) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
