"""The prepared-dataset folder: compact per-split arrays plus id maps and metadata.

Layout written by :func:`dmirec.data.prepare.prepare` and read by :func:`load_dataset`::

    meta.json                 format version, name, counts, what prepare kept and filtered
    item_ids.txt              raw item id of new id i+1 on line i (new id 0 is padding)
    user_ids.txt              raw user id of new user id j on line j
    {split}_offsets.npy       int64 (U+1,): user u's items are items[offsets[u]:offsets[u+1]]
    {split}_items.npy         int32 (M,): new item ids 1..N, each user's in time order
    {split}_users.npy         int64 (U,): new user ids, in file order
    {split}_timestamps.npy    int64 (M,): timestamps as the ComiRec files print them

``split`` is ``train``, ``valid`` and ``test``. Users are the unit of the split (ComiRec/REMI).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..util.atomic import PyWriter, naming_write_errors

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")


class DatasetError(ValueError):
    """A prepared dataset folder is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class Sequences:
    """Variable-length item sequences of one split in CSR form."""

    offsets: np.ndarray  # (U + 1,) int64
    items: np.ndarray  # (M,) int32
    users: np.ndarray  # (U,) int64
    timestamps: np.ndarray  # (M,) int64

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (U,)

    def sequence(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u]:self.offsets[u + 1]]

    def validate(self, num_items: int, where: str) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise DatasetError(f"{where}: offsets must start at 0")
        if np.any(np.diff(self.offsets) < 0):
            raise DatasetError(f"{where}: offsets must be non-decreasing")
        if self.offsets[-1] != len(self.items) or len(self.timestamps) != len(self.items):
            raise DatasetError(f"{where}: offsets, items and timestamps disagree in length")
        if len(self.users) != self.num_users:
            raise DatasetError(f"{where}: {len(self.users)} user ids for {self.num_users} sequences")
        if len(self.items) and (self.items.min() < 1 or self.items.max() > num_items):
            raise DatasetError(f"{where}: item ids must lie in 1..{num_items}")


@dataclass(frozen=True)
class PreparedData:
    """A loaded prepared dataset."""

    path: Path
    meta: dict
    splits: dict[str, Sequences]
    item_ids: list[str]  # raw id of new id i+1 at index i

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def num_items(self) -> int:
        return int(self.meta["num_items"])

    def item_popularity(self, split: str = "train") -> np.ndarray:
        """Interaction counts per new item id over one split: (N + 1,), entry 0 is 0."""
        return np.bincount(self.splits[split].items, minlength=self.num_items + 1).astype(np.int64)


def save_split(outdir: Path, split: str, seqs: Sequences) -> None:
    """The split's four arrays; a failed write (a full disk) names its file and the cause."""
    for field, arr in (("offsets", seqs.offsets.astype(np.int64)), ("items", seqs.items.astype(np.int32)),
                       ("users", seqs.users.astype(np.int64)), ("timestamps", seqs.timestamps.astype(np.int64))):
        _save_array(outdir / f"{split}_{field}.npy", arr)


def _save_array(path: Path, arr: np.ndarray) -> None:
    with naming_write_errors(path), open(path, "wb") as fh:
        np.save(PyWriter(fh), arr, allow_pickle=False)


def write_ids(path: Path, ids: list[str]) -> None:
    for raw in ids:
        if "\n" in raw or "\r" in raw:
            raise DatasetError(f"{path.name}: raw id {raw!r} contains a line break")
    path.write_text("".join(f"{raw}\n" for raw in ids), encoding="utf-8")


def read_ids(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"missing file {path}") from None
    return text.split("\n")[:-1] if text else []


def load_dataset(path: str | Path, mmap: bool = False) -> PreparedData:
    """Load a folder written by ``dmirec prepare``; errors name the missing or bad file."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise DatasetError(f"{path}: not a prepared dataset (no meta.json); run `dmirec prepare` first")
    meta = json.loads(meta_path.read_text())
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{meta_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    mode = "r" if mmap else None
    splits = {}
    for split in SPLITS:
        arrays = {}
        for field in ("offsets", "items", "users", "timestamps"):
            file = path / f"{split}_{field}.npy"
            if not file.exists():
                raise DatasetError(f"missing file {file}")
            arrays[field] = np.load(file, mmap_mode=mode)
        seqs = Sequences(**arrays)
        seqs.validate(int(meta["num_items"]), f"{path}/{split}_*.npy")
        splits[split] = seqs
    item_ids = read_ids(path / "item_ids.txt")
    if len(item_ids) != int(meta["num_items"]):
        raise DatasetError(f"{path / 'item_ids.txt'}: {len(item_ids)} ids for num_items={meta['num_items']}")
    return PreparedData(path=path, meta=meta, splits=splits, item_ids=item_ids)
