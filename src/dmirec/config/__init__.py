"""Typed run configuration: a frozen dataclass with defaults, YAML files and ``--key=value`` on top.

Every knob of every model lives in one flat :class:`Config` so that a YAML file, a command line
override and a saved run directory all speak the same language. Unknown keys and values of the
wrong type are errors that name the key. Defaults are the reference training defaults of
docs/design.md (D=64, K=4, batch 128, Adam 1e-3, 1,280 shared uniform negatives, validation every
500 steps, patience 10).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


@dataclass(frozen=True)
class Config:
    # --- what to train -------------------------------------------------------------------------
    model: str = "comirec-sa"  # the model to train, a name of the zoo (docs/models/zoo.md)
    backbone: str = "comirec-sa"  # used by wrappers (DMI) only
    seed: int = 2021  # seeds the model initialisation, batches and negatives: the same seed gives the same numbers
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0 = torch default

    # --- model size ----------------------------------------------------------------------------
    embedding_dim: int = 64  # D, the size of item embeddings and interest vectors
    num_interests: int = 4  # K, interest vectors per user
    seq_len: int = 20  # L, the last L history items are the model input (20 Amazon-style, 40 check-ins)
    sa_hidden_factor: int = 4  # ComiRec-SA attention hidden size = factor * D
    add_positions: bool = True  # learned position embeddings in ComiRec-SA

    # --- capsule routing (MIND / ComiRec-DR) ----------------------------------------------------
    routing_iters: int = 3  # capsule routing iterations
    routing_axis: str = "positions"  # positions (PyTorch ports) | interests (original TF code)
    label_aware_pow: float = 0.0  # MIND label-aware attention power; 0 = hard argmax read-out
    mind_relu_layer: bool = False  # MIND's ReLU layer after routing
    routing_renormalise: bool = False  # keep padding out of the routing softmax (reference: off)

    # --- REMI training scheme ------------------------------------------------------------------
    hard_negative_beta: float = 0.0  # interest-aware hard-negative weighting; 0 = off
    routing_reg: float = 0.0  # routing (attention) regularisation weight; 0 = off

    # --- optimisation --------------------------------------------------------------------------
    batch_size: int = 128  # training sequences per step
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam weight decay (0: none, as the reference)
    num_negatives: int = 1280  # sampled-softmax negatives shared by the batch (>= 1)
    negative_sampler: str = "uniform"  # uniform | log_uniform
    logq_correction: bool = False  # subtract log Q(item) from sampled logits
    remove_accidental_hits: bool = False  # mask negatives equal to the target
    min_cut: int = 4  # a training cut point k >= min_cut (ComiRec protocol)
    # item-table updates: dense Adam over the whole table, or row-sparse (sparse gradients of the
    # rows a step touched + SparseAdam); auto = sparse from sparse_min_items items up (docs/scale/large-data.md);
    # the same rule for a sharded table's rows
    # rowwise_adagrad: a sharded table only, updated inside the backward by TorchRec's fused kernel
    # (row-wise Adagrad at table_lr), O(batch) per step
    embedding_optimizer: str = "auto"  # auto | dense | sparse | rowwise_adagrad
    table_lr: float = 0.05  # the item table's learning rate with embedding_optimizer=rowwise_adagrad
    sparse_min_items: int = 50_000  # measured: level with dense at 25k items, 1.6x faster at 50k
    # torchrun: each rank draws its own negatives for its share of the batch (rank), or every rank
    # draws the same ones (global: the step equals a one-process step, for checks)
    dist_negatives: str = "rank"  # rank | global
    # torchrun: the item table sharded row-wise over the ranks with TorchRec (the `dist` extra;
    # dmirec.training.distributed.sharded); the rest of the model stays data-parallel
    sharded_embeddings: bool = False
    # the item table's initial draw: reference = Kaiming-normal over the whole table from the run's
    # generator (the public code's); blocked = the same distribution, each block of 65,536 rows from
    # its own seeded generator, so a process can draw any rows alone (a sharded table's); auto =
    # blocked when sharded_embeddings, else reference
    table_init: str = "auto"  # auto | reference | blocked
    bf16: bool = False  # bfloat16 autocast of forward and loss (CUDA; CPU works but is slow)
    compile: bool = False  # torch.compile the step's loss and its backward (falls back to eager if the compiler cannot run)

    # --- budget, validation, early stopping ----------------------------------------------------
    max_steps: int = 100_000  # step cap; early stopping usually ends a run first
    eval_every: int = 500  # validate every this many steps
    patience: int = 10  # stop once more than `patience` validations in a row bring no better R@50 (as the reference)
    eval_batch_size: int = 1024  # users per batch when ranking
    eval_max_users: int = 0  # 0 = all validation users
    valid_users: int = 0  # > 0: validate on a fixed seeded sample of this many validation users (test stays full)
    retrieval_backend: str = "auto"  # auto (faiss flat on CPU, torch on CUDA: the faster exact search) | torch | faiss
    exclude_history: bool = False  # never recommend items of the user's history
    progress: bool = True  # show a progress bar
    # cutoffs of the reported metrics (comma list on the command line); 20 and 50 are always added,
    # as the checkpoint is chosen on valid Recall@50 and the tables print @20 and @50
    metric_ns: tuple[int, ...] = (20, 50)
    tensorboard: bool = False  # also log the validation scalars to RUN_DIR/tensorboard (extra `tensorboard`)

    # --- interest bank and the neighbour rule (any model) ----------------------------------------
    neighbour_alpha: float = 0.0  # query vectors += alpha * cosine-weighted mean of n bank neighbours; 0 = off
    neighbours: int = 4  # n, for the rule and for DMI's neighbour keys
    bank_max_users: int = 0  # 0 = every training user in the bank; else a seeded sample of that many
    bank_train_sample: int = 2048  # DMI's neighbour keys in training: bank users searched per step (0 = all)
    bank_search: str = "exact"  # exact | hnsw: bank search outside training (evaluate, export, serve)
    bank_hnsw_ef: int = 128  # hnsw: candidate list size per query (efSearch); larger = closer to exact

    # --- COIN (baseline) ------------------------------------------------------------------------
    coin_contrast_weight: float = 10.0  # weight of the bank contrastive loss
    coin_temperature: float = 0.1  # COIN's contrastive temperature
    coin_bank_sample: int = 40_000  # bank users scored per step for the contrastive loss
    coin_negatives: int = 2560  # contrastive negatives per example
    coin_gru_layers: int = 1  # COIN's GRU layers
    coin_ff_dim: int = 2048  # feed-forward width of COIN's Transformer layer (its code: PyTorch's default)

    # --- SASRec (baseline) -----------------------------------------------------------------------
    sasrec_blocks: int = 2  # causal self-attention blocks (the paper's b = 2)
    sasrec_heads: int = 1  # attention heads per block (the paper: one); must divide embedding_dim
    sasrec_dropout: float = 0.2  # dropout of the input, the attention and the FFN (the paper's 0.2 on Amazon data)

    # --- DMI refiner ---------------------------------------------------------------------------
    diffusion_steps: int = 10  # T
    schedule: str = "linear"  # linear | cosine
    beta_start: float = 1e-4  # diffusion schedule: first beta
    beta_end: float = 2e-2  # diffusion schedule: last beta
    noise_scale: float = 1.0  # s: beta_t = s * schedule(t)
    noise_kind: str = "gaussian"  # gaussian | dim_mask
    normalize_scale: bool = True  # diffuse v0 / running RMS, rescale after
    start_step: int = 0  # T' (0 = T)
    reverse_steps: int = 1  # S (0 = T'); one step by default: the step training runs (see docs/models/dmi.md)
    sampler: str = "posterior_mean"  # posterior_mean (deterministic) | ancestral (seeded DDPM steps)
    prediction: str = "x0_residual"  # x0_residual (a correction to v_t / sqrt(abar_t), starts as the identity) | x0
    fusion_weight: float = 0.2  # u = w * refined + (1 - w) * coarse; 0 = no diffusion (the backbone)
    dmi_keys: str = "items"  # comma list of items | neighbours | others: what the denoiser attends to
    dmi_target: str = "interest"  # interest (rebuild itself, the figure) | next_item (reconstruct the target)
    dmi_output: str = "fuse"  # fuse (fusion_weight) | extra (K generated vectors as K more queries)
    cond_dropout: float = 0.0  # next_item: share of training examples whose keys are all masked
    guidance: float = 1.0  # next_item: classifier-free guidance weight w at evaluation (1 = conditional)
    prune: str = "topm"  # topm | threshold | none
    prune_m: int = 5  # DMI item pruning: the top-m history items of each interest are the denoiser's keys
    denoiser: str = "attention"  # attention | mlp
    denoiser_blocks: int = 1  # cross-attention blocks of DMI's denoiser
    denoiser_heads: int = 2  # attention heads of DMI's denoiser
    step_token: bool = True  # DMI's diffusion-step token among the keys
    recon_weight: float = 1.0  # tuned on beauty validation users (0.1 first); configs/bench/dmi_tune.yaml
    no_noise: bool = False  # ablation: same denoiser, t=0
    train_chain: bool = False  # unroll the reverse chain from t in training
    refiner_lr_scale: float = 1.0  # learning-rate factor of DMI's refiner
    freeze_backbone_steps: int = 0  # DMI: steps during which the backbone is frozen (warm start from init_from)
    # warm start: a run directory (its checkpoints/best.pt) or a checkpoint file whose model is
    # loaded before step 0: into the backbone under DMI (train the refiner after the backbone),
    # into the whole model otherwise; the start is validated as step 0
    init_from: str = ""

    # --- repeats (docs/models/repeats.md) -----------------------------------------------------
    # the user's own history items as a channel merged into any model's list; off by default.
    # `dmirec fit-repeat RUN_DIR` chooses weight/recency/bias on validation users (repeat.json)
    repeat_channel: bool = False
    repeat_weight: float = 0.0  # 0 = exactly the model's list
    repeat_recency: float = 0.0  # weight of 1 / (1 + age of the last visit) in the repeat score
    repeat_bias: float = 0.0  # subtracted from every history item's repeat score
    repeat_decay: float = 0.0  # visit weight exp(-decay * age); 0 = plain counts (also --model repeat)
    repeat_ref_rank: int = 50  # the model's score spread s_1 - s_R scales the repeat bonus
    # evaluation view: drop targets already in the history, exclude history items from the candidates
    new_items_only: bool = False

    # --- item-to-item models (--model itemknn / rp3beta / ease; docs/classical.md) ------------------
    # fitted in closed form on the training users' item sets; a user's whole history scores items
    itemknn_shrink: float = 10.0  # cosine shrinkage: <x_i, x_j> / (|x_i| |x_j| + shrink)
    itemknn_neighbours: int = 200  # neighbours kept per item (the matrix is sparse: N x this)
    rp3beta_alpha: float = 0.5  # RP3beta: walk probabilities to this power
    rp3beta_beta: float = 0.25  # RP3beta: the target item divided by its popularity to this power
    rp3beta_neighbours: int = 200  # RP3beta: targets kept per item
    ease_lambda: float = 200.0  # L2 weight of EASE's closed form
    ease_neighbours: int = 500  # entries kept per item of EASE's dense matrix (0 = keep it dense)
    ease_max_items: int = 50_000  # EASE refuses larger catalogues (a dense N x N inverse)
    history_decay: float = 0.0  # history item weight exp(-decay * age) for the item-to-item models

    def to_dict(self) -> dict[str, Any]:
        # tuples become lists so the dict is plain YAML/JSON
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> "Config":
        return from_dict({**self.to_dict(), **changes})


_FIELDS = {f.name: f for f in fields(Config)}
_HINTS = typing.get_type_hints(Config)


def _coerce(key: str, value: Any) -> Any:
    """Check (and, for strings from the command line, parse) one value against its field type."""
    want = _HINTS[key]
    if typing.get_origin(want) is tuple:
        return _int_tuple(key, value)
    if isinstance(want, types.UnionType) or typing.get_origin(want) is typing.Union:
        raise ConfigError(f"config key {key!r}: unsupported field type {want}")
    if isinstance(value, str) and want is not str:
        text = value.strip()
        if want is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ConfigError(f"config key {key!r}: expected a boolean, got {value!r}")
        number = _parse_number(text) if want in (int, float) else None
        if number is not None:
            value = number
        else:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"config key {key!r}: cannot parse {value!r}") from exc
    if want is int and isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # 1e5 for a step count
    if want is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected a boolean, got {value!r}")
        return value
    if want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return value
    if want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        return float(value)
    if want is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key {key!r}: unsupported field type {want}")


def _parse_number(text: str) -> int | float | None:
    """``1e-3``, ``5e4``, ``100_000``, ``.5`` as Python reads them (YAML 1.1 takes ``1e-3`` for a
    string); None when the text is not a finite number."""
    for parse in (int, float):
        try:
            value = parse(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    return None


def _int_tuple(key: str, value: Any) -> tuple[int, ...]:
    """A tuple of positive integers from a list/tuple or a comma string such as ``"10,20,50"``."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.strip().strip("[]()").split(",") if p.strip()]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"config key {key!r}: expected comma-separated integers, got {value!r}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"config key {key!r}: expected a non-empty list of integers, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ConfigError(f"config key {key!r}: every entry must be a positive integer, got {value!r}")
    return tuple(sorted(set(value)))


# The one registry of allowed values; modules take their choices from here.
CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "routing_axis": ("positions", "interests"),
    "negative_sampler": ("uniform", "log_uniform"),
    "retrieval_backend": ("auto", "torch", "faiss"),
    "schedule": ("linear", "cosine"),
    "noise_kind": ("gaussian", "dim_mask"),
    "prune": ("topm", "threshold", "none"),
    "denoiser": ("attention", "mlp"),
    "sampler": ("posterior_mean", "ancestral"),
    "prediction": ("x0_residual", "x0"),
    "dmi_target": ("interest", "next_item"),
    "dmi_output": ("fuse", "extra"),
    "embedding_optimizer": ("auto", "dense", "sparse", "rowwise_adagrad"),
    "dist_negatives": ("rank", "global"),
    "table_init": ("auto", "reference", "blocked"),
    "bank_search": ("exact", "hnsw"),
}
DMI_KEY_SOURCES = ("items", "neighbours", "others")

# Keys that were renamed: a clear error instead of "unknown key".
RENAMED = {"eta": "fusion_weight", "stochastic_reverse": "sampler (posterior_mean | ancestral)",
           "denoiser_residual": "prediction (x0_residual | x0)"}


def upgrade_saved(values: dict[str, Any]) -> dict[str, Any]:
    """A resolved config saved by an earlier version (run directory, bundle) in today's keys."""
    if not isinstance(values, dict):
        return values  # from_dict names the problem
    values = dict(values)
    if "eta" in values:
        values.setdefault("fusion_weight", values.pop("eta"))
    if "stochastic_reverse" in values:
        values.setdefault("sampler", "ancestral" if values.pop("stochastic_reverse") else "posterior_mean")
    if "denoiser_residual" in values:
        values.setdefault("prediction", "x0_residual" if values.pop("denoiser_residual") else "x0")
    return values


def did_you_mean(key: str) -> str:
    """`` (did you mean 'max_steps'?)`` for a misspelt config key, or nothing."""
    import difflib

    close = difflib.get_close_matches(key, list(_FIELDS), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def config_keys_help() -> str:
    """Every config key with its type, default and the comment beside it in :class:`Config`:
    the ``--help`` of the commands that take ``--key=value`` overrides."""
    import inspect
    import re

    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(Config).splitlines():
        text = line.strip()
        m = re.match(r"(\w+): [^=]+=\s*[^#]*?(?:#\s*(.*))?$", text)
        if text.startswith("#") and not text.startswith("# ---"):
            pending.append(text.lstrip("# "))
        elif m and m.group(1) in _FIELDS:
            docs[m.group(1)] = m.group(2) or " ".join(pending)
            pending = []
        elif not text or text.startswith("# ---"):
            pending = []
    lines = ["config keys (--key=value, or key: value in a --config YAML file):"]
    for f in fields(Config):
        hint = _HINTS[f.name]
        kind = getattr(hint, "__name__", str(hint)).replace("typing.", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        doc = docs.get(f.name, "")
        lines.append(f"  {f.name} ({kind}, default {default!r})" + (f": {doc}" if doc else ""))
    return "\n".join(lines)


def from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from a mapping; unknown keys and wrong types raise :class:`ConfigError`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of key: value, got {type(values).__name__}")
    clean = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key in RENAMED:
            raise ConfigError(f"{source}: config key {key!r} was renamed: use {RENAMED[key]}")
        if key not in _FIELDS:
            raise ConfigError(f"{source}: unknown config key {key!r}{did_you_mean(key)}")
        clean[key] = _coerce(key, value)
    for key, allowed in CHOICES.items():
        if key in clean and clean[key] not in allowed:
            raise ConfigError(f"{source}: config key {key!r} must be one of {allowed}, got {clean[key]!r}")
    cfg = Config(**clean)
    _check_ranges(cfg, source)
    return cfg


SHARDED_MODELS = ("comirec-sa", "remi", "comirec-dr", "mind")  # read the item table only through item_emb(ids)


def _check_ranges(cfg: Config, source: str) -> None:
    positive = ("embedding_dim", "num_interests", "seq_len", "batch_size", "eval_every",
                "eval_batch_size", "diffusion_steps", "routing_iters", "prune_m", "coin_temperature",
                "coin_bank_sample", "coin_negatives", "coin_gru_layers", "coin_ff_dim", "repeat_ref_rank",
                "itemknn_neighbours", "ease_lambda", "ease_max_items", "rp3beta_alpha", "rp3beta_neighbours",
                "num_negatives", "lr", "sasrec_blocks", "sasrec_heads")
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{source}: config key {key!r} must be positive, got {getattr(cfg, key)}")
    for key in ("max_steps", "patience", "eval_max_users", "start_step", "reverse_steps",
                "valid_users", "sparse_min_items"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{source}: config key {key!r} must be >= 0, got {getattr(cfg, key)}")
    for key in ("fusion_weight", "cond_dropout"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ConfigError(f"{source}: config key {key!r} must be in [0, 1], got {getattr(cfg, key)}")
    if not 0.0 <= cfg.sasrec_dropout < 1.0:
        raise ConfigError(f"{source}: config key 'sasrec_dropout' must be in [0, 1), got {cfg.sasrec_dropout}")
    if cfg.embedding_dim % cfg.sasrec_heads:
        raise ConfigError(f"{source}: config key 'sasrec_heads' ({cfg.sasrec_heads}) must divide embedding_dim "
                          f"({cfg.embedding_dim})")
    for key in ("threads", "neighbour_alpha", "bank_max_users", "bank_train_sample", "guidance", "coin_contrast_weight"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{source}: config key {key!r} must be >= 0, got {getattr(cfg, key)}")
    if cfg.neighbours <= 0:
        raise ConfigError(f"{source}: config key 'neighbours' must be positive, got {cfg.neighbours}")
    if cfg.bank_hnsw_ef <= 0:
        raise ConfigError(f"{source}: config key 'bank_hnsw_ef' must be positive, got {cfg.bank_hnsw_ef}")
    keys = [k.strip() for k in cfg.dmi_keys.split(",") if k.strip()]
    if not keys or len(set(keys)) != len(keys) or any(k not in DMI_KEY_SOURCES for k in keys):
        raise ConfigError(f"{source}: config key 'dmi_keys' must be a comma list of distinct names from "
                          f"{DMI_KEY_SOURCES}, got {cfg.dmi_keys!r}")
    if cfg.valid_users and cfg.eval_max_users:
        raise ConfigError(f"{source}: config keys 'valid_users' (a seeded sample) and 'eval_max_users' (the first "
                          f"users) both choose validation users; set only one")
    if cfg.sharded_embeddings and cfg.model not in SHARDED_MODELS:
        raise ConfigError(f"{source}: config key 'sharded_embeddings' supports models {', '.join(SHARDED_MODELS)}, "
                          f"not {cfg.model}")
    if cfg.sharded_embeddings and cfg.table_init == "reference":
        raise ConfigError(f"{source}: config key 'table_init': a sharded table draws its rows block by block "
                          f"(blocked or auto), not over the whole table (reference)")
    if cfg.sharded_embeddings and (cfg.neighbour_alpha > 0 or cfg.repeat_channel):
        raise ConfigError(f"{source}: config key 'sharded_embeddings' cannot be combined with "
                          f"{'neighbour_alpha > 0' if cfg.neighbour_alpha > 0 else 'repeat_channel'} (an interest bank "
                          f"or history scores read the whole table); apply it at evaluation of the finished run")
    if cfg.embedding_optimizer == "rowwise_adagrad" and not cfg.sharded_embeddings:
        raise ConfigError(f"{source}: config key 'embedding_optimizer': rowwise_adagrad is TorchRec's fused update "
                          f"of a sharded table; it needs sharded_embeddings=true (one process: dense or sparse)")
    if cfg.embedding_optimizer == "rowwise_adagrad" and cfg.weight_decay:
        raise ConfigError(f"{source}: config key 'weight_decay' must be 0 with embedding_optimizer=rowwise_adagrad")
    if cfg.table_lr <= 0:
        raise ConfigError(f"{source}: config key 'table_lr' must be positive, got {cfg.table_lr}")
    if cfg.embedding_optimizer == "sparse" and cfg.weight_decay:
        raise ConfigError(f"{source}: config key 'weight_decay' must be 0 with embedding_optimizer=sparse "
                          f"(decay would touch every row of the item table)")
    for key in ("repeat_weight", "repeat_decay", "itemknn_shrink", "ease_neighbours", "history_decay", "rp3beta_beta"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{source}: config key {key!r} must be >= 0, got {getattr(cfg, key)}")
    if cfg.start_step > cfg.diffusion_steps:
        raise ConfigError(f"{source}: config key 'start_step' must be <= diffusion_steps")
    if cfg.reverse_steps > (cfg.start_step or cfg.diffusion_steps):
        raise ConfigError(f"{source}: config key 'reverse_steps' must be <= start_step (or diffusion_steps)")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML config file into a mapping, as written (``include:`` not yet resolved)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at top level")
    return data


INCLUDE_KEY = "include"


def resolve_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file with its ``include:`` files merged in: the layered configs of configs/.

    ``include:`` names one file or a list of files, relative to the including file. They are
    resolved the same way (includes nest), merged in the order listed, and the including file's
    own keys come last, so later keys win. A missing file, a cycle, or an invalid key names the
    file it is in; each file is validated as a whole config on its own.
    """
    path = Path(path)
    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        where = f" (included from {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {path}{where}") from None
    if real in _chain:
        loop = " -> ".join(str(p) for p in (*_chain[_chain.index(real):], real))
        raise ConfigError(f"{path}: include cycle: {loop}")
    data = {str(k).replace("-", "_"): v for k, v in load_yaml(path).items()}
    includes = data.pop(INCLUDE_KEY, [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) and i.strip() for i in includes):
        raise ConfigError(f"{path}: {INCLUDE_KEY!r} must be a file name or a list of file names, got {includes!r}")
    merged: dict[str, Any] = {}
    for name in includes:
        merged.update(resolve_yaml(real.parent / name, (*_chain, real)))
    merged.update(data)
    from_dict(merged, source=str(path))  # validate each file on its own, naming it in errors
    return merged


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Turn ``["--lr=0.01", "batch_size=64"]`` into ``{"lr": "0.01", "batch_size": "64"}``.

    ``--max-steps=5`` and ``--max_steps=5`` are the same key. Unknown keys, a key given twice,
    and a key without ``=value`` are errors (nothing is ignored or silently overridden).
    """
    out: dict[str, str] = {}
    for item in items:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            hint = f" (write --{text}=VALUE)" if text.replace("-", "_") in _FIELDS else ""
            raise ConfigError(f"override {item!r}: expected --key=value{hint}")
        key, value = text.split("=", 1)
        key = key.replace("-", "_")
        if key not in _FIELDS:
            raise ConfigError(f"command line: unknown config key {key!r}{did_you_mean(key)}")
        if key in out:
            raise ConfigError(f"command line: config key {key!r} is given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


# Config values a model name implies unless the user sets them (a wrapper such as DMI also takes
# its backbone's). Applied by build_config, the one way a Config is made from names and files.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "remi": {"hard_negative_beta": 1.0, "routing_reg": 100.0},
    "dmi": {"backbone": "remi"},
    "coin": {"hard_negative_beta": 1.0, "routing_reg": 100.0, "neighbour_alpha": 0.55, "neighbours": 3},
    "youtube-dnn": {"num_interests": 1},
    "sasrec": {"num_interests": 1},
    "most-popular": {"num_interests": 1, "max_steps": 0},
    "repeat": {"num_interests": 1, "max_steps": 0},
    "itemknn": {"num_interests": 1, "max_steps": 0},
    "ease": {"num_interests": 1, "max_steps": 0},
    "rp3beta": {"num_interests": 1, "max_steps": 0},
}


def model_defaults(model: str, backbone: str | None = None) -> dict[str, Any]:
    """Config values implied by a model name (and, for wrappers, by their backbone)."""
    out: dict[str, Any] = {}
    own = MODEL_DEFAULTS.get(model, {})
    if "backbone" in own or backbone is not None:
        out.update(MODEL_DEFAULTS.get(backbone or own.get("backbone", ""), {}))
    out.update(own)
    if backbone is not None:
        out["backbone"] = backbone
    out["model"] = model
    return out


def build_config(yaml_paths: list[str | Path] = (), overrides: dict[str, Any] | None = None,
                 model: str | None = None) -> Config:
    """Defaults < the model's defaults < each YAML file in order < ``overrides``.

    A YAML file's ``include:`` files come before its own keys (:func:`resolve_yaml`).

    The model (and a wrapper's backbone) may be named by ``model``, in ``overrides`` or in a YAML
    file; the last of these to name it decides whose defaults apply.
    """
    overrides = {str(k).replace("-", "_"): v for k, v in (overrides or {}).items()}
    if model:
        overrides["model"] = model
    files = []
    for path in yaml_paths:
        files.append(resolve_yaml(path))  # validated file by file, errors name the file
    if overrides:
        from_dict(dict(overrides), source="command line")
    chosen, backbone = Config.model, None
    for layer in files + [overrides]:
        chosen = layer.get("model", chosen)
        backbone = layer.get("backbone", backbone)
    merged = model_defaults(str(chosen), backbone)
    for layer in files + [overrides]:
        merged.update(layer)
    return from_dict(merged)


def make_config(model: str | None = None, yaml_paths: list[str | Path] = (), overrides: dict | None = None) -> Config:
    """:func:`build_config` with the model first (the order the command line reads)."""
    return build_config(yaml_paths, overrides, model=model)
