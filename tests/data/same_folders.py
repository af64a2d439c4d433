"""Byte-for-byte comparison of two prepared-dataset folders (streaming vs in-memory prepare tests)."""

from pathlib import Path


def same_folders(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        x, y = (a / name).read_bytes(), (b / name).read_bytes()
        if name == "meta.json":  # the report names its own output folder
            x, y = x.replace(str(a).encode(), b"OUT"), y.replace(str(b).encode(), b"OUT")
        assert x == y, name
