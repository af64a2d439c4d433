"""A retrieval recipe: several channels, each giving its top candidates, merged into one list.

A channel is any model of the zoo with the way it ranks (:func:`channel_list`):

* a vector model (REMI, DMI, COIN, ...): its query vectors searched over its item table, with the
  neighbour rule and the repeat stage its config sets (:func:`dmirec.repeats.retrieve`);
* an item-to-item model (ItemKNN, EASE): the user's whole history scores items
  (:meth:`dmirec.models.item_item.ItemItemModel.rank_histories`);
* the repeat ranking (``--model repeat``): the user's own history by visit count, then popular.

:class:`Recipe` ranks a batch of histories with every channel of positive weight (each its top
``depth``), merges the lists (:mod:`dmirec.recipes.merge`: weighted reciprocal-rank or
calibrated score fusion), and fills short lists with the most popular items. Evaluation
(:func:`evaluate_recipe`), the bundle's ``/recommend`` and batch candidates all call
:meth:`Recipe.rank`, so they give the same lists.

On disk a recipe is a folder (``RUN_DIR/recipe/`` for a run, ``recipe/`` inside a bundle)::

    recipe.json        channels (name, kind, config), merger, weights, k, depth, exclude_history,
                       and how they were chosen (:mod:`dmirec.recipes.fit`)
    channel-NAME.pt    the state dict of every channel model other than the run's own ("model")

The run's own model is the channel named ``model``; it is read from the run (or the bundle).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..util.jsonfile import read_json
from ..config import Config, ConfigError, from_dict, upgrade_saved
from ..data.sampler import left_pad
from ..models import build_model
from ..repeats.channel import channel_from_config, model_stage, retrieve
from ..retrieval import SearchResult, make_searcher
from ..retrieval.fill import fill_popular
from ..util.atomic import make_readable
from .merge import MERGERS, merge

RECIPE_DIR = "recipe"
RECIPE_FILE = "recipe.json"
FORMAT = "dmirec-recipe"
FORMAT_VERSION = 1
OWN_MODEL = "model"  # the channel that is the run's (or bundle's) own model
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # channel names are file names


@dataclass
class Channel:
    """One channel: a model, the history length its queries read, and how it searches."""

    name: str
    model: torch.nn.Module
    config: Config
    search: Callable[..., SearchResult] | None = None  # search(queries, n, exclude) over its items
    item_embeddings: np.ndarray | None = None  # (N + 1, D), for the repeat channel's history scores
    stage: Any = None  # the repeat stage: the repeat model's ranking or the repeat channel

    @property
    def kind(self) -> str:
        if hasattr(self.model, "rank_histories"):
            return "item-item"
        return "history" if self.stage is not None and self.config.model == "repeat" else "vectors"


def make_channel(name: str, model: torch.nn.Module, cfg: Config, backend: str = "auto",
                 search: Callable[..., SearchResult] | None = None, stage: Any = "config") -> Channel:
    """A :class:`Channel` for ``model``; vector models get an exact searcher over their items
    unless ``search`` is given (a bundle's index). ``stage``: the repeat stage, by default the one
    the model carries or its config asks for."""
    model.eval()
    if stage == "config":
        stage = model_stage(model) or channel_from_config(cfg)
    if hasattr(model, "rank_histories"):
        return Channel(name, model, cfg, stage=None)
    items = model.item_embeddings().detach().float().cpu().numpy()  # (N + 1, D)
    if search is None:
        search = make_searcher(items, backend).search
    return Channel(name, model, cfg, search=search, item_embeddings=items, stage=stage)


@torch.no_grad()
def channel_list(ch: Channel, histories: Sequence[np.ndarray], n: int, exclude_history: bool = False,
                 batch_size: int = 1024) -> SearchResult:
    """The channel's top ``n`` for each history (1-D id arrays, oldest first, each non-empty).

    History items are excluded when ``exclude_history`` is set or the channel's own config says so
    (its ``exclude_history``, chosen per channel on validation users by the fit)."""
    exclude_history = bool(exclude_history or ch.config.exclude_history)
    if hasattr(ch.model, "rank_histories"):
        return ch.model.rank_histories(histories, n, histories if exclude_history else None)
    parts = []
    for start in range(0, len(histories), batch_size):
        chunk = list(histories[start:start + batch_size])
        hist, mask = left_pad(chunk, int(ch.config.seq_len))  # (b, L) each
        queries = ch.model.user_vectors(torch.from_numpy(hist), torch.from_numpy(mask)).float().numpy()  # (b, K, D)
        parts.append(retrieve(ch.search, queries, chunk, n, exclude_history=exclude_history, stage=ch.stage,
                              item_embeddings=ch.item_embeddings))
    if not parts:
        empty = np.zeros((0, n), np.int64)
        return SearchResult(ids=empty, scores=np.zeros((0, n), np.float32), interest=empty.copy())
    return SearchResult(ids=np.concatenate([p.ids for p in parts]), scores=np.concatenate([p.scores for p in parts]),
                        interest=np.concatenate([p.interest for p in parts]))


@dataclass
class Recipe:
    """Channels, their weights and the merger; :meth:`rank` gives the served lists."""

    channels: list[Channel]
    weights: list[float]
    merger: str = "rrf"
    k: float = 60.0
    depth: int = 200
    exclude_history: bool = False
    popular_order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) the fill
    info: dict[str, Any] = field(default_factory=dict)  # how it was chosen (recipe.json's "fit")

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.channels):
            raise ValueError(f"{len(self.channels)} channels but {len(self.weights)} weights")
        if self.merger not in MERGERS:
            raise ValueError(f"unknown merger {self.merger!r}; expected one of {MERGERS}")
        if not any(w > 0 for w in self.weights):
            raise ValueError("a recipe needs at least one channel with a positive weight")

    @property
    def active(self) -> list[tuple[Channel, float]]:
        return [(c, float(w)) for c, w in zip(self.channels, self.weights) if w > 0]

    def rank(self, histories: Sequence[np.ndarray], n: int, exclude_history: bool | None = None) -> SearchResult:
        """Top n per history: each active channel's top ``max(depth, n)``, merged, then popular fill."""
        exclude = self.exclude_history if exclude_history is None else bool(exclude_history)
        depth = max(int(self.depth), int(n))
        lists = [channel_list(c, histories, depth, exclude) for c, _ in self.active]
        merged = merge(lists, [w for _, w in self.active], int(n), self.merger, self.k)
        return fill_popular(merged, self.popular_order, histories if exclude else None)

    def describe(self) -> dict[str, Any]:
        """What ``/metadata`` and the manifest state about the recipe."""
        return {"merger": self.merger, "k": self.k, "depth": self.depth, "exclude_history": self.exclude_history,
                "channels": [channel_summary(c, w) for c, w in zip(self.channels, self.weights)]}


#: the settings that say what a channel is, by model (the run's own channel adds its exclude_history)
SETTING_KEYS = {
    "itemknn": ("itemknn_shrink", "itemknn_neighbours", "history_decay", "exclude_history"),
    "ease": ("ease_lambda", "ease_neighbours", "history_decay", "exclude_history"),
    "rp3beta": ("rp3beta_alpha", "rp3beta_beta", "rp3beta_neighbours", "history_decay", "exclude_history"),
    "repeat": ("repeat_decay",),
}


def channel_summary(ch: Channel, weight: float) -> dict[str, Any]:
    cfg = ch.config
    out: dict[str, Any] = {"name": ch.name, "model": cfg.model, "kind": ch.kind, "weight": float(weight)}
    for key in SETTING_KEYS.get(cfg.model, ()):
        out[key] = getattr(cfg, key)
    if ch.kind == "vectors":
        out["exclude_history"] = cfg.exclude_history
        out["neighbour_rule"] = ({"alpha": cfg.neighbour_alpha, "neighbours": cfg.neighbours}
                                 if cfg.neighbour_alpha > 0 else None)
        out["repeat_channel"] = ({k: getattr(cfg, k) for k in ("repeat_weight", "repeat_recency", "repeat_bias",
                                                                "repeat_decay", "repeat_ref_rank")}
                                 if cfg.repeat_channel else None)
    return out


# ----------------------------------------------------------------------------------------------
# files


class RecipeError(ValueError):
    """A recipe folder is missing, malformed or does not fit its run; the message names the file."""


def recipe_spec(recipe: Recipe) -> dict[str, Any]:
    """The JSON document of ``recipe`` (channels' configs, not their weights)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "channels": [{"name": c.name, "config": c.config.to_dict()} for c in recipe.channels],
            "weights": [float(w) for w in recipe.weights], "merger": recipe.merger, "k": float(recipe.k),
            "depth": int(recipe.depth), "exclude_history": bool(recipe.exclude_history), "fit": recipe.info}


def channel_file(name: str) -> str:
    """The file holding a channel's weights in a recipe folder (or a bundle)."""
    return f"channel-{name}.pt"


def recipe_files(recipe: Recipe) -> dict[str, bytes]:
    """Every file of a recipe folder, name -> bytes (recipe.json and one .pt per foreign channel)."""
    import io

    files = {RECIPE_FILE: (json.dumps(recipe_spec(recipe), indent=2) + "\n").encode("utf-8")}
    for c in recipe.channels:
        if c.name == OWN_MODEL:
            continue
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in c.model.state_dict().items()}, buf)
        files[channel_file(c.name)] = buf.getvalue()
    return files


def write_recipe(folder: str | Path, recipe: Recipe) -> None:
    """Write the recipe folder atomically: assembled in a temporary folder beside it, then renamed
    over it (a kill leaves the old recipe or the new one)."""
    import os
    import shutil
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        make_readable(tmp, directory=True)
        for name, data in recipe_files(recipe).items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not exc.filename:
            raise OSError(exc.errno, f"{folder}: cannot write the recipe ({exc.strerror or exc})") from None
        raise


def read_spec(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / RECIPE_FILE
    spec = read_json(path, RecipeError, missing="no recipe (write one with `dmirec fit-channels RUN_DIR`)")
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise RecipeError(f"{path}: not a dmirec recipe (format {spec.get('format') if isinstance(spec, dict) else None!r})")
    if spec.get("format_version") != FORMAT_VERSION:
        raise RecipeError(f"{path}: recipe format version {spec.get('format_version')!r} is not supported "
                          f"(this dmirec reads {FORMAT_VERSION})")
    for key in ("channels", "weights", "merger", "k", "depth", "exclude_history"):
        if key not in spec:
            raise RecipeError(f"{path}: missing field {key!r}")
    names = [c.get("name") for c in spec["channels"] if isinstance(c, dict)] if isinstance(spec["channels"], list) else []
    if (not names or len(names) != len(spec["channels"]) or len(set(names)) != len(names)
            or not all(isinstance(x, str) and NAME.fullmatch(x) for x in names)):
        raise RecipeError(f"{path}: 'channels' must be a non-empty list of objects with distinct names "
                          f"of letters, digits, '_', '-' and '.'")
    return spec


def load_recipe(folder: str | Path, own_model: torch.nn.Module | None, own_config: Config | None,
                num_items: int, popularity: np.ndarray, backend: str = "auto",
                own_search: Callable[..., SearchResult] | None = None) -> Recipe:
    """Rebuild a recipe from its folder; the channel ``model`` is ``own_model`` (the run's or the
    bundle's model, with ``own_search`` when the bundle has an index)."""
    folder = Path(folder)
    spec = read_spec(folder)
    channels = []
    for entry in spec["channels"]:
        name = entry["name"]
        try:
            cfg = from_dict(upgrade_saved(dict(entry.get("config") or {})), source=f"{folder / RECIPE_FILE} channel {name}")
        except ConfigError as exc:
            raise RecipeError(str(exc)) from None
        if name == OWN_MODEL:
            if own_model is None:
                raise RecipeError(f"{folder / RECIPE_FILE}: channel 'model' needs the run's own model")
            channels.append(make_channel(name, own_model, own_config or cfg, backend, search=own_search))
            continue
        path = folder / channel_file(name)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise RecipeError(f"{path}: missing (the weights of channel {name!r})") from None
        except Exception as exc:  # torch raises several types for bad files
            raise RecipeError(f"{path}: cannot load channel {name!r} ({exc})") from None
        model = build_model(cfg, num_items, popularity)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise RecipeError(f"{path}: weights do not fit model {cfg.model!r} ({exc})") from None
        channels.append(make_channel(name, model, cfg, backend))
    pop = np.asarray(popularity, dtype=np.float64)
    order = np.lexsort((np.arange(pop.size), -pop))
    try:
        return Recipe(channels, [float(w) for w in spec["weights"]], spec["merger"], float(spec["k"]),
                      int(spec["depth"]), bool(spec["exclude_history"]), order[order > 0].astype(np.int64),
                      spec.get("fit") or {})
    except ValueError as exc:
        raise RecipeError(f"{folder / RECIPE_FILE}: {exc}") from None
