"""The serving bundle: one self-contained folder holding everything a server needs.

Layout (format version 1)::

    BUNDLE/manifest.json          format and versions, model summary, sha256 of every file, index info
    BUNDLE/config.yaml            the resolved training configuration (rebuilds the model)
    BUNDLE/model.pt               the model weights (a state dict; loaded with weights_only=True)
    BUNDLE/item_ids.txt           raw item id of item i on line i (1-based; item 0 is padding)
    BUNDLE/item_embeddings.npy    float32 (N + 1, D), row 0 = padding: what the index searches
    BUNDLE/popularity.npy         int64 (N + 1,), training interaction counts (the fallback list)
    BUNDLE/query_sample.npy       float32 (S, K, D) validation users' interest vectors (index recall)
    BUNDLE/index.faiss            optional, written by ``dmirec index`` (inner-product faiss index
                                  over items 1..N, faiss id = item id - 1)

:func:`write_bundle` writes a bundle (used by :mod:`dmirec.serving.export` and the synthetic catalogue
script); :func:`load_bundle` reads one back, refusing it when a checksum fails or its format
version is not supported; :class:`Bundle` answers recommendations for raw-id histories, one at a
time (:meth:`Bundle.recommend`) or in batches (:meth:`Bundle.recommend_ids`).

This module knows nothing about training or HTTP: it uses the model registry, the retrieval
backends and the files above.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import yaml

from ..util.jsonfile import read_json
from ..util.atomic import PyWriter, atomic_write_bytes, make_readable, naming_write_errors
from ..config import Config, from_dict, upgrade_saved
from ..data.sampler import left_pad
from ..models import build_model
from ..recipes.recipe import RecipeError, load_recipe
from ..repeats.channel import RepeatFirst, channel_from_config, model_stage, retrieve
from ..retrieval import ExactTorchSearch, FaissSearch, SearchResult, resolve_backend
from ..retrieval.faiss_search import set_search_params

FORMAT = "dmirec-bundle"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)

MANIFEST = "manifest.json"
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.pt"
ITEM_IDS_FILE = "item_ids.txt"
EMBEDDINGS_FILE = "item_embeddings.npy"
POPULARITY_FILE = "popularity.npy"
QUERY_SAMPLE_FILE = "query_sample.npy"
INDEX_FILE = "index.faiss"
REQUIRED_FILES = (CONFIG_FILE, MODEL_FILE, ITEM_IDS_FILE, EMBEDDINGS_FILE, POPULARITY_FILE, QUERY_SAMPLE_FILE)

FALLBACK_INTEREST = -1  # the "interest" reported for popularity-fallback items


class BundleError(ValueError):
    """A bundle is missing, corrupted or unsupported; the message names the file and the reason."""


# ----------------------------------------------------------------------------------------------
# versions and checksums


def dmirec_version() -> str:
    try:
        from importlib.metadata import version

        return version("dmirec")
    except Exception:  # not installed (e.g. run from a source tree)
        return "0+unknown"


def faiss_version() -> str | None:
    try:
        import faiss

        return str(faiss.__version__)
    except Exception:
        return None


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(block)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


MANIFEST_CHECKSUM = "manifest_sha256"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's own fields (all but this checksum), as canonical JSON."""
    fields = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace ``manifest.json`` (temporary file in the same folder, then rename); the
    manifest's own fields are covered by ``manifest_sha256``."""
    bundle_dir = Path(bundle_dir)
    manifest = {**{k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM}}
    manifest[MANIFEST_CHECKSUM] = manifest_digest(manifest)
    atomic_write_bytes(bundle_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Read and check the manifest's format and version (no checksums: see :func:`verify_bundle`)."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: no such bundle folder")
    path = bundle_dir / MANIFEST
    if not path.exists():
        raise BundleError(f"{path}: missing; {bundle_dir} is not a bundle (create one with `dmirec export`)")
    manifest = read_json(path, BundleError, hint="; the bundle is corrupted")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a dmirec bundle manifest (expected \"format\": \"{FORMAT}\")")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"{path}: bundle format version {version!r} is not supported by dmirec {dmirec_version()} "
            f"(supported: {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); re-export the bundle with this "
            f"dmirec or serve it with the dmirec version that wrote it ({manifest.get('dmirec_version')})"
        )
    if not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{path}: no \"files\" table of checksums")
    stored = manifest.get(MANIFEST_CHECKSUM)  # absent only in bundles written before it existed
    if stored is not None and stored != manifest_digest(manifest):
        raise BundleError(f"{path}: checksum of the manifest's own fields failed (manifest_sha256 "
                          f"{stored}, the fields give {manifest_digest(manifest)}); it was edited after export")
    return manifest


def verify_bundle(bundle_dir: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every file listed in the manifest against its size and sha256; returns the manifest.

    Raises :class:`BundleError` naming the first file that is missing or whose checksum fails.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir) if manifest is None else manifest
    files = manifest["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"{bundle_dir / MANIFEST}: lists no checksum for required file {name}")
    index = manifest.get("index")
    if index and index.get("file") not in files:
        raise BundleError(f"{bundle_dir / MANIFEST}: the index file {index.get('file')!r} has no checksum")
    ours = (MANIFEST, *files)
    for extra in sorted(bundle_dir.iterdir()):
        if extra.name not in ours and not _own_temporary(extra.name):
            raise BundleError(f"{extra}: not listed in the manifest; a bundle holds only its listed files "
                              f"(it was modified after export: remove the file or re-export)")
    for name, entry in files.items():
        path = bundle_dir / name
        if Path(name).name != name:
            raise BundleError(f"{bundle_dir / MANIFEST}: file name {name!r} is not a plain file name")
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in the manifest)")
        size = path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            raise BundleError(f"{path}: checksum failed (size {size} bytes, the manifest says "
                              f"{entry['bytes']}); the bundle is corrupted or was modified after export")
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise BundleError(f"{path}: checksum failed (sha256 {digest}, the manifest says "
                              f"{entry.get('sha256')}); the bundle is corrupted or was modified after export")
    return manifest


def _own_temporary(name: str) -> bool:
    """A temporary file an interrupted ``write_manifest`` / ``dmirec index`` can leave (ignored)."""
    return name.startswith((".manifest.", ".index.")) and name.endswith(".tmp")


# ----------------------------------------------------------------------------------------------
# writing


def write_bundle(bundle_dir: str | Path, *, model_state: dict[str, torch.Tensor], config: Config,
                 item_ids: Sequence[str], item_embeddings: np.ndarray, popularity: np.ndarray,
                 query_sample: np.ndarray, info: dict[str, Any] | None = None,
                 overwrite: bool = False, extra_files: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Write a complete bundle folder and return its manifest.

    The bundle is assembled in a temporary folder beside ``bundle_dir`` and renamed into place,
    so an interrupted export never leaves a half-written bundle. An existing non-empty
    ``bundle_dir`` is an error unless ``overwrite``. ``info`` (model, dataset and source
    descriptions) is stored in the manifest as given.
    """
    bundle_dir = Path(bundle_dir)
    item_ids = list(item_ids)
    num_items = len(item_ids)
    emb = np.ascontiguousarray(item_embeddings, dtype=np.float32)  # (N + 1, D)
    pop = np.asarray(popularity, dtype=np.int64)  # (N + 1,)
    queries = np.ascontiguousarray(query_sample, dtype=np.float32)  # (S, K, D)
    if emb.ndim != 2 or emb.shape[0] != num_items + 1:
        raise BundleError(f"item embeddings have shape {emb.shape}, expected ({num_items + 1}, D)")
    if not np.isfinite(emb).all():
        raise BundleError("item embeddings contain NaN or infinite values")
    if pop.shape != (num_items + 1,):
        raise BundleError(f"popularity has shape {pop.shape}, expected ({num_items + 1},)")
    if queries.ndim != 3 or queries.shape[2] != emb.shape[1]:
        raise BundleError(f"query sample has shape {queries.shape}, expected (S, K, {emb.shape[1]})")
    for raw in item_ids:
        if not isinstance(raw, str) or raw == "" or "\n" in raw or "\r" in raw:
            raise BundleError(f"raw item id {raw!r} is empty, not a string or contains a line break")
    if len(set(item_ids)) != num_items:
        raise BundleError("raw item ids are not unique")
    if bundle_dir.exists() and (not bundle_dir.is_dir() or any(bundle_dir.iterdir())) and not overwrite:
        raise BundleError(f"{bundle_dir}: already exists and is not empty (pass overwrite=True / --overwrite)")

    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=bundle_dir.parent, prefix=f".{bundle_dir.name}.", suffix=".tmp"))
    try:
        make_readable(tmp, directory=True)
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model_state.items()}, buf)
        # a failed write (a full disk) names the bundle's file and the cause; the old bundle stays
        with naming_write_errors(bundle_dir / MODEL_FILE):
            _fsync_write(tmp / MODEL_FILE, buf.getvalue())
        with naming_write_errors(bundle_dir / CONFIG_FILE):
            _fsync_write(tmp / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False).encode("utf-8"))
        with naming_write_errors(bundle_dir / ITEM_IDS_FILE):
            _fsync_write(tmp / ITEM_IDS_FILE, "".join(f"{raw}\n" for raw in item_ids).encode("utf-8"))
        for name, data in (extra_files or {}).items():
            if Path(name).name != name or name in REQUIRED_FILES or name in (MANIFEST, INDEX_FILE):
                raise BundleError(f"extra bundle file {name!r} is not a free plain file name")
            with naming_write_errors(bundle_dir / name):
                _fsync_write(tmp / name, data)
        for name, arr in ((EMBEDDINGS_FILE, emb), (POPULARITY_FILE, pop), (QUERY_SAMPLE_FILE, queries)):
            with naming_write_errors(bundle_dir / name), open(tmp / name, "wb") as fh:
                np.save(PyWriter(fh), arr, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dmirec_version": dmirec_version(),
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
            "model": config.model,
            "num_items": num_items,
            "embedding_dim": int(emb.shape[1]),
            "num_interests": int(queries.shape[1]),
            "seq_len": config.seq_len,
            "query_sample_users": int(queries.shape[0]),
            **(info or {}),
            "index": None,
            "files": {name: file_entry(tmp / name) for name in (*REQUIRED_FILES, *sorted(extra_files or {}))},
        }
        with naming_write_errors(bundle_dir / "manifest.json"):
            write_manifest(tmp, manifest)
        if bundle_dir.exists():
            old = bundle_dir.parent / f".{bundle_dir.name}.old-{os.getpid()}"
            os.replace(bundle_dir, old)
            os.replace(tmp, bundle_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, bundle_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# ----------------------------------------------------------------------------------------------
# reading and recommending


@dataclass(frozen=True)
class Encoded:
    """A raw-id history mapped to item ids: the known ids oldest first, and the unknown raw ids."""

    ids: np.ndarray  # (M,) int64 item ids 1..N of the known items, in history order
    unknown: list[str]  # distinct unknown raw ids in order of first appearance


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path}: cannot read the {what} ({exc})") from None


class Bundle:
    """A loaded bundle: model, catalogue, popularity fallback and the searcher (index or exact).

    Thread-safe for concurrent :meth:`recommend` calls (inference runs under
    ``torch.inference_mode`` and the searchers keep no per-call state).
    """

    def __init__(self, path: str | Path, *, verify: bool = True, load_model: bool = True,
                 use_index: bool = True, exact_backend: str = "auto", device: str | torch.device = "cpu"):
        self.path = Path(path)
        self.manifest = verify_bundle(self.path) if verify else read_manifest(self.path)
        self.config: Config = self._read_config()
        self.item_ids: list[str] = self._read_item_ids()
        self.num_items = len(self.item_ids)
        self.id_of: dict[str, int] = {raw: i + 1 for i, raw in enumerate(self.item_ids)}
        self.item_embeddings = _load_npy(self.path / EMBEDDINGS_FILE, "item embeddings")  # (N + 1, D)
        self.popularity = _load_npy(self.path / POPULARITY_FILE, "popularity")  # (N + 1,)
        if self.item_embeddings.shape[0] != self.num_items + 1 or self.popularity.shape != (self.num_items + 1,):
            raise BundleError(f"{self.path}: {ITEM_IDS_FILE}, {EMBEDDINGS_FILE} and {POPULARITY_FILE} "
                              f"disagree on the catalogue size ({self.num_items} ids)")
        self.dim = int(self.item_embeddings.shape[1])
        self.seq_len = int(self.config.seq_len)
        self.device = torch.device(device)
        # most popular first, then lower item id; item 0 (padding) excluded
        pop = self.popularity[1:]
        self.popular_order = (np.lexsort((np.arange(1, self.num_items + 1), -pop)) + 1).astype(np.int64)  # (N,)
        self.model = self._load_model() if load_model else None
        # the repeat model's ranking or the repeat channel (docs/models/repeats.md); None: plain search
        self.repeat_stage = model_stage(self.model) or channel_from_config(self.config)
        self.index = None
        self.index_info: dict[str, Any] | None = None
        if use_index and self.manifest.get("index"):
            self.index_info = dict(self.manifest["index"])
            self.index = load_faiss_index(self.path / self.index_info["file"], self.index_info)
        exact_backend = resolve_backend(exact_backend, self.device)  # auto: faiss on CPU, torch on CUDA
        if self.index is not None:
            self.searcher = FaissSearch(self.item_embeddings, self.index)
        elif exact_backend == "torch":
            self.searcher = ExactTorchSearch(self.item_embeddings, device=self.device)  # the reference
        elif exact_backend == "faiss":
            self.searcher = FaissSearch(self.item_embeddings)  # IndexFlatIP: exact, faster for big batches
        else:
            raise ValueError(f"exact_backend must be 'auto', 'torch' or 'faiss', got {exact_backend!r}")
        self._query_sample: np.ndarray | None = None
        # a fitted recipe of channels (docs/recipes.md): its own channel is this model and searcher
        self.recipe = self._load_recipe() if load_model and self.manifest.get("recipe") else None

    # -- loading helpers ---------------------------------------------------------------------
    def _read_config(self) -> Config:
        path = self.path / CONFIG_FILE
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return from_dict(upgrade_saved(data), source=str(path))
        except FileNotFoundError:
            raise BundleError(f"{path}: missing") from None
        except (yaml.YAMLError, ValueError) as exc:
            raise BundleError(f"{path}: cannot rebuild the configuration ({exc})") from None

    def _read_item_ids(self) -> list[str]:
        path = self.path / ITEM_IDS_FILE
        text = path.read_text(encoding="utf-8")
        ids = text.split("\n")[:-1] if text else []
        if len(ids) != int(self.manifest.get("num_items", len(ids))):
            raise BundleError(f"{path}: {len(ids)} ids but the manifest says num_items={self.manifest['num_items']}")
        return ids

    def _load_model(self) -> torch.nn.Module:
        path = self.path / MODEL_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for bad files
            raise BundleError(f"{path}: cannot load the model weights ({exc})") from None
        model = build_model(self.config, self.num_items, self.popularity)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise BundleError(f"{path}: weights do not fit model {self.config.model!r} ({exc})") from None
        return model.to(self.device).eval()

    def _load_recipe(self):
        try:
            return load_recipe(self.path, self.model, self.config, self.num_items, self.popularity,
                               own_search=self.searcher.search)
        except RecipeError as exc:
            raise BundleError(str(exc)) from None

    @property
    def query_sample(self) -> np.ndarray:
        """(S, K, D) validation users' interest vectors, for measuring index recall."""
        if self._query_sample is None:
            self._query_sample = _load_npy(self.path / QUERY_SAMPLE_FILE, "query sample")
        return self._query_sample

    @property
    def index_kind(self) -> str:
        return self.index_info["kind"] if self.index_info else "exact"

    # -- encoding ----------------------------------------------------------------------------
    def encode(self, history: Iterable[str]) -> Encoded:
        """Map raw ids to item ids; unknown ids are dropped and reported (distinct, first-seen order).
        Integer ids are the strings they print as (6413 is "6413"), as in the HTTP API."""
        known: list[int] = []
        unknown: dict[str, None] = {}
        get = self.id_of.get
        if isinstance(history, (str, bytes)):
            raise TypeError("history must be a list of raw id strings, not one string")
        history = list(history)
        for pos, raw in enumerate(history):
            if isinstance(raw, int) and not isinstance(raw, bool):  # as the HTTP API: 6413 is "6413"
                history[pos] = raw = str(raw)
            if not isinstance(raw, str):
                raise TypeError(f"history[{pos}]: raw ids are strings or integers, got {type(raw).__name__} {raw!r}")
        for raw in history:
            i = get(raw)
            if i is None:
                unknown.setdefault(raw, None)
            else:
                known.append(i)
        return Encoded(np.asarray(known, dtype=np.int64), list(unknown))

    def model_inputs(self, seqs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The last ``seq_len`` ids of each sequence, left-padded with 0: history (B, L), mask (B, L)."""
        return left_pad(seqs, self.seq_len)

    # -- scoring -----------------------------------------------------------------------------
    def user_vectors_ids(self, seqs: Sequence[np.ndarray]) -> np.ndarray:
        """Query vectors (B, K, D) float32 for item-id sequences (each non-empty, oldest first)."""
        if self.model is None:
            raise BundleError("this bundle was loaded without its model (load_model=False)")
        hist, mask = self.model_inputs(seqs)
        with torch.inference_mode():
            h = torch.from_numpy(hist).to(self.device)  # (B, L)
            m = torch.from_numpy(mask).to(self.device)  # (B, L)
            return self.model.user_vectors(h, m).float().cpu().numpy()  # (B, K, D)

    def interest_vectors(self, history: Iterable[str]) -> np.ndarray:
        """The K interest (query) vectors (K, D) of a raw-id history (oldest first)."""
        enc = self.encode(history)
        if len(enc.ids) == 0:
            raise ValueError("the history holds no item of the catalogue"
                             + (f" (unknown: {enc.unknown[:5]})" if enc.unknown else " (it is empty)"))
        return self.user_vectors_ids([enc.ids])[0]

    def popular(self, n: int) -> np.ndarray:
        return self.popular_order[:n]

    def recommend_ids(self, seqs: Sequence[np.ndarray], n: int, exclude_history: bool = False
                      ) -> tuple[SearchResult, np.ndarray]:
        """Top-n for a batch of item-id sequences; returns the result and a (B,) fallback flag.

        Sequences with no item get the ``n`` most popular items (score = training count,
        interest = -1). With ``exclude_history`` the items of each whole sequence are excluded.
        The repeat model's ranking or the repeat channel, when the bundle's config has one, runs
        over each whole sequence (:func:`dmirec.repeats.channel.retrieve`, as evaluation does).
        Missing slots (fewer than n items available) hold id -1.
        """
        n = int(n)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        B = len(seqs)
        ids = np.full((B, n), -1, dtype=np.int64)
        scores = np.full((B, n), -np.inf, dtype=np.float32)
        interest = np.full((B, n), -1, dtype=np.int64)
        fallback = np.array([len(s) == 0 for s in seqs], dtype=bool)  # (B,)
        rows = np.flatnonzero(~fallback)
        if len(rows):
            sub = [seqs[r] for r in rows]
            if self.recipe is not None:  # the channels merged, as `dmirec evaluate` measured them
                res = self.recipe.rank(sub, n, True if exclude_history else None)
            else:
                res = self._search(sub, n, exclude_history)
            ids[rows], scores[rows], interest[rows] = res.ids, res.scores, res.interest
        if fallback.any():
            top = self.popular(n)
            ids[fallback, :len(top)] = top
            scores[fallback, :len(top)] = self.popularity[top].astype(np.float32)
            interest[fallback, :len(top)] = FALLBACK_INTEREST
        return SearchResult(ids=ids, scores=scores, interest=interest), fallback

    def _search(self, seqs: Sequence[np.ndarray], n: int, exclude_history: bool) -> SearchResult:
        """The model alone: an item-to-item model scores the whole sequences; a vector model's queries
        are searched, then its repeat stage (:func:`dmirec.repeats.retrieve`, as evaluation does)."""
        if hasattr(self.model, "rank_histories"):
            return self.model.rank_histories(seqs, n, seqs if exclude_history else None)
        queries = self.user_vectors_ids(seqs)  # (b, K, D)
        return retrieve(self.searcher.search, queries, seqs, n, exclude_history=exclude_history,
                        stage=self.repeat_stage, item_embeddings=self.item_embeddings)

    def warm(self) -> float:
        """Answer one request (the most popular items as history, with and without exclusion) so that
        what is built on first use is built now, before a client waits: the interest bank's HNSW
        graph (``bank_search=hnsw``: seconds for a large bank), the recipe's item-item matrices,
        torch's first calls. Returns the seconds it took."""
        start = time.perf_counter()
        if self.model is not None and self.num_items:
            history = [self.item_ids[i - 1] for i in self.popular(min(self.seq_len, self.num_items))]
            for exclude in (False, True):
                self.recommend(history, 10, exclude)
        return time.perf_counter() - start

    def recommend(self, history: Iterable[str], n: int = 50, exclude_history: bool = False) -> dict[str, Any]:
        """Recommendations for one raw-id history (oldest first), as the HTTP API returns them::

            {"items": [{"item": raw id, "score": float, "interest": k}, ...],
             "unknown": [raw ids not in the catalogue], "fallback": bool}
        """
        enc = self.encode(history)
        res, fallback = self.recommend_ids([enc.ids], n, exclude_history)
        items = [
            {"item": self.item_ids[i - 1], "score": float(s), "interest": int(k)}
            for i, s, k in zip(res.ids[0].tolist(), res.scores[0].tolist(), res.interest[0].tolist())
            if i > 0
        ]
        return {"items": items, "unknown": enc.unknown, "fallback": bool(fallback[0])}

    def metadata(self) -> dict[str, Any]:
        m = self.manifest
        index = {"kind": self.index_kind}
        if self.index_info:
            index.update({k: v for k, v in self.index_info.items() if k != "file"})
        else:
            index["recall"] = None
            index["note"] = "no index built: exact search over the whole catalogue"
        dataset = {k: v for k, v in (m.get("dataset") or {}).items() if k != "prepared_path"}  # no server paths
        return {
            "model": m.get("model"),
            "dataset": dataset,
            "catalogue_size": self.num_items,
            "embedding_dim": self.dim,
            "num_interests": m.get("num_interests"),
            "seq_len": self.seq_len,
            "index": index,
            "repeat": _repeat_info(self.repeat_stage),
            "neighbour_rule": ({"alpha": self.config.neighbour_alpha, "neighbours": self.config.neighbours}
                               if self.config.neighbour_alpha > 0 else None),
            "recipe": self.recipe.describe() if self.recipe is not None else None,
            "served_metrics": m.get("served"),
            "bundle": {"name": self.path.name, "created": m.get("created"), "format_version": m.get("format_version")},
            "versions": {
                "format_version": m.get("format_version"),
                "exported_with": {"dmirec": m.get("dmirec_version"), "torch": m.get("torch_version")},
                "serving": {"dmirec": dmirec_version(), "torch": torch.__version__, "faiss": faiss_version()},
            },
        }


def _repeat_info(stage) -> dict[str, Any] | None:
    """What ``/metadata`` says about the repeat stage: the repeat model's ranking or the channel."""
    if stage is None:
        return None
    from dataclasses import asdict

    return {"stage": "repeat_first" if isinstance(stage, RepeatFirst) else "channel", **asdict(stage)}


def load_faiss_index(path: Path, info: dict[str, Any]):
    """Read a faiss index and apply its search parameters (efSearch / nprobe) from ``info``.

    Indexes built now carry the item ids (an ``IDMap2``); one from before the id map holds items
    1..N in order and is still read (:class:`dmirec.retrieval.FaissSearch` maps its labels)."""
    import faiss

    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise BundleError(f"{path}: cannot read the faiss index ({exc}); rebuild it with "
                          f"`dmirec index {path.parent} --kind {info.get('kind', 'flat')}`") from None
    return set_search_params(index, info.get("params", {}))


def load_bundle(path: str | Path, *, verify: bool = True, use_index: bool = True, exact_backend: str = "auto",
                device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle for serving. Checksums are verified unless ``verify=False``.

    Search uses the bundle's faiss index when it has one (and ``use_index``), else exact search
    over the whole catalogue with ``exact_backend`` (``auto``: faiss flat on the CPU, the torch search
    on a CUDA device; or ``torch``, the reference, or ``faiss`` flat).
    """
    return Bundle(path, verify=verify, use_index=use_index, exact_backend=exact_backend, device=device)
