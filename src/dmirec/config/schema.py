"""The config schema: every key once, in a section, with its type, default, range and one line of doc.

A section is a pydantic model whose fields are config keys. :data:`SECTIONS` says which models read
each section: the common ones (training, evaluation, retrieval, the neighbour rule, repeats) are read
by every model; the others by the models named (REMI's scheme by remi, coin and DMI on a REMI
backbone; ``coin_*`` by coin; the refiner by dmi, which also reads its backbone's sections).
:data:`MODEL_DEFAULTS` holds the values a model name implies (``--model coin`` is the benchmarked
COIN); a wrapper (DMI) takes its backbone's first. The flat run-time :class:`dmirec.config.Config`
is generated from these sections, so this module is the one home of every default.

Ranges are declared with ``gt`` / ``ge`` / ``lt`` / ``le`` on the field and checked by
:mod:`dmirec.config` (with messages in its words); allowed strings are ``choices``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: readers of a section that every model reads
EVERY_MODEL = "every model"

#: the models of the zoo (docs/models/zoo.md); the registry in dmirec.models builds exactly these
MODELS = ("comirec-sa", "remi", "comirec-dr", "mind", "youtube-dnn", "sasrec", "most-popular", "coin", "repeat",
          "dmi", "itemknn", "rp3beta", "ease")

#: Models that wrap another (their ``backbone`` key) and read its sections too.
WRAPPERS = ("dmi",)
#: What a wrapper can wrap: the models with a learned item table and interest vectors.
BACKBONES = ("comirec-sa", "remi", "comirec-dr", "mind", "youtube-dnn", "sasrec", "coin")


def key(default: Any, doc: str, *, choices: tuple[str, ...] | None = None, **bounds: Any) -> Any:
    """One config key: its default, one line of doc, allowed strings (``choices``) and bounds
    (``gt``, ``ge``, ``lt``, ``le``)."""
    extra = {"choices": list(choices)} if choices else None
    return Field(default, description=doc, json_schema_extra=extra, **bounds)


class Section(BaseModel):
    """A group of config keys read together."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- read by every model -------------------------------------------------------------------------

class Run(Section):
    """What to train, on what, from where."""

    model: str = key("comirec-sa", "the model to train, a name of the zoo (docs/models/zoo.md)", choices=MODELS)
    seed: int = key(2021, "seeds the model initialisation, batches and negatives: the same seed gives the same "
                          "numbers")
    device: str = key("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    threads: int = key(0, "torch intra-op threads; 0 = torch default", ge=0)
    init_from: str = key("", "warm start: a run directory (its checkpoints/best.pt) or a checkpoint file loaded "
                             "before step 0: into the backbone under DMI, into the whole model otherwise")


class Size(Section):
    """The size of the model's input and output."""

    embedding_dim: int = key(64, "D, the size of item embeddings and interest vectors", gt=0)
    num_interests: int = key(4, "K, interest vectors per user", gt=0)
    seq_len: int = key(20, "L, the last L history items are the model input (20 Amazon-style, 40 check-ins)", gt=0)


class Training(Section):
    """Optimisation, sampled softmax, item-table updates, budget and early stopping."""

    batch_size: int = key(128, "training sequences per step", gt=0)
    lr: float = key(1e-3, "Adam learning rate", gt=0)
    weight_decay: float = key(0.0, "Adam weight decay (0: none, as the reference)")
    num_negatives: int = key(1280, "sampled-softmax negatives shared by the batch (>= 1)", gt=0)
    negative_sampler: str = key("uniform", "uniform | log_uniform", choices=("uniform", "log_uniform"))
    logq_correction: bool = key(False, "subtract log Q(item) from sampled logits")
    remove_accidental_hits: bool = key(False, "mask negatives equal to the target")
    min_cut: int = key(4, "a training cut point k >= min_cut (ComiRec protocol)")
    embedding_optimizer: str = key(
        "auto", "item-table updates: dense Adam, row-sparse SparseAdam, auto = sparse from sparse_min_items items "
                "up, rowwise_adagrad = TorchRec's fused update of a sharded table (docs/scale/large-data.md)",
        choices=("auto", "dense", "sparse", "rowwise_adagrad"))
    table_lr: float = key(0.05, "the item table's learning rate with embedding_optimizer=rowwise_adagrad", gt=0)
    sparse_min_items: int = key(50_000, "auto picks sparse table updates from this many items (measured: level "
                                        "with dense at 25k items, 1.6x faster at 50k)", ge=0)
    dist_negatives: str = key("rank", "torchrun: each rank draws its own negatives (rank), or every rank the same "
                                      "ones (global: the step equals a one-process step)", choices=("rank", "global"))
    sharded_embeddings: bool = key(False, "torchrun: the item table sharded row-wise over the ranks with TorchRec "
                                          "(the `dist` extra); the rest stays data-parallel")
    table_init: str = key("auto", "the item table's initial draw: reference (Kaiming-normal over the whole table), "
                                  "blocked (seeded per 65,536-row block), auto = blocked when sharded",
                          choices=("auto", "reference", "blocked"))
    bf16: bool = key(False, "bfloat16 autocast of forward and loss (CUDA; CPU works but is slow)")
    compile: bool = key(False, "torch.compile the step's loss and its backward (falls back to eager if the "
                               "compiler cannot run; docs/scale/step-speed.md)")
    max_steps: int = key(100_000, "step cap; early stopping usually ends a run first", ge=0)
    eval_every: int = key(500, "validate every this many steps", gt=0)
    patience: int = key(10, "stop once more than `patience` validations in a row bring no better R@50 (as the "
                            "reference)", ge=0)


class Evaluation(Section):
    """Validation, test metrics and the exact search."""

    eval_batch_size: int = key(1024, "users per batch when ranking", gt=0)
    eval_max_users: int = key(0, "0 = all validation users", ge=0)
    valid_users: int = key(0, "> 0: validate on a fixed seeded sample of this many validation users (test stays "
                              "full)", ge=0)
    retrieval_backend: str = key("auto", "auto (faiss flat on CPU, torch on CUDA: the faster exact search) | torch "
                                         "| faiss", choices=("auto", "torch", "faiss"))
    exclude_history: bool = key(False, "never recommend items of the user's history")
    new_items_only: bool = key(False, "evaluation view: drop targets already in the history, exclude history items "
                                      "from the candidates")
    progress: bool = key(True, "show a progress bar")
    metric_ns: tuple[int, ...] = key((20, 50), "cutoffs of the reported metrics (comma list); 20 and 50 are always "
                                               "added (the checkpoint is chosen on valid Recall@50)")
    tensorboard: bool = key(False, "also log the validation scalars to RUN_DIR/tensorboard (extra `tensorboard`)")


class NeighbourRule(Section):
    """The interest bank of training users and the neighbour rule on query vectors (any model)."""

    neighbour_alpha: float = key(0.0, "query vectors += alpha * cosine-weighted mean of n bank neighbours; 0 = off",
                                 ge=0)
    neighbours: int = key(4, "n, for the rule, COIN's positives and DMI's neighbour keys", gt=0)
    bank_max_users: int = key(0, "0 = every training user in the bank; else a seeded sample of that many", ge=0)
    bank_search: str = key("exact", "exact | hnsw: bank search outside training (evaluate, export, serve)",
                           choices=("exact", "hnsw"))
    bank_hnsw_ef: int = key(128, "hnsw: candidate list size per query (efSearch); larger = closer to exact", gt=0)


class Repeats(Section):
    """The user's own history items as a channel merged into any model's list (docs/models/repeats.md);
    `dmirec fit-repeat RUN_DIR` chooses weight, recency and bias on validation users."""

    repeat_channel: bool = key(False, "merge the repeat channel into the model's list (off by default)")
    repeat_weight: float = key(0.0, "0 = exactly the model's list", ge=0)
    repeat_recency: float = key(0.0, "weight of 1 / (1 + age of the last visit) in the repeat score")
    repeat_bias: float = key(0.0, "subtracted from every history item's repeat score")
    repeat_decay: float = key(0.0, "visit weight exp(-decay * age); 0 = plain counts (also --model repeat)", ge=0)
    repeat_ref_rank: int = key(50, "the model's score spread s_1 - s_R scales the repeat bonus", gt=0)


# --- read by some models -------------------------------------------------------------------------

class SelfAttention(Section):
    """ComiRec-SA's attention (comirec-sa, remi, and DMI on them)."""

    sa_hidden_factor: int = key(4, "ComiRec-SA attention hidden size = factor * D")
    add_positions: bool = key(True, "learned position embeddings in ComiRec-SA")


class CapsuleRouting(Section):
    """Capsule routing (mind, comirec-dr, and DMI on them)."""

    routing_iters: int = key(3, "capsule routing iterations", gt=0)
    routing_axis: str = key("positions", "positions (PyTorch ports) | interests (original TF code)",
                            choices=("positions", "interests"))
    label_aware_pow: float = key(0.0, "label-aware read-out power in training; 0 = hard argmax read-out")
    routing_renormalise: bool = key(False, "keep padding out of the routing softmax (reference: off)")


class Mind(Section):
    """MIND's own layer."""

    mind_relu_layer: bool = key(False, "MIND's ReLU layer after routing")


class RemiScheme(Section):
    """REMI's training scheme (remi, coin, and DMI on a REMI backbone)."""

    hard_negative_beta: float = key(0.0, "interest-aware hard-negative weighting; 0 = off")
    routing_reg: float = key(0.0, "routing (attention) regularisation weight; 0 = off")


class Coin(Section):
    """COIN (baseline): the bank contrastive loss and its context encoder."""

    coin_contrast_weight: float = key(10.0, "weight of the bank contrastive loss", ge=0)
    coin_temperature: float = key(0.1, "COIN's contrastive temperature", gt=0)
    coin_bank_sample: int = key(40_000, "bank users scored per step for the contrastive loss", gt=0)
    coin_negatives: int = key(2560, "contrastive negatives per example", gt=0)
    coin_gru_layers: int = key(1, "COIN's GRU layers", gt=0)
    coin_ff_dim: int = key(2048, "feed-forward width of COIN's Transformer layer (its code: PyTorch's default)",
                           gt=0)


class SASRec(Section):
    """SASRec (baseline)."""

    sasrec_blocks: int = key(2, "causal self-attention blocks (the paper's b = 2)", gt=0)
    sasrec_heads: int = key(1, "attention heads per block (the paper: one); must divide embedding_dim", gt=0)
    sasrec_dropout: float = key(0.2, "dropout of the input, the attention and the FFN (the paper's 0.2 on Amazon "
                                     "data)", ge=0, lt=1)


class DMI(Section):
    """DMI's refiner (dmi; it also reads its backbone's sections)."""

    backbone: str = key("comirec-sa", "the model DMI refines", choices=BACKBONES)
    diffusion_steps: int = key(10, "T", gt=0)
    schedule: str = key("linear", "linear | cosine", choices=("linear", "cosine"))
    beta_start: float = key(1e-4, "diffusion schedule: first beta")
    beta_end: float = key(2e-2, "diffusion schedule: last beta")
    noise_scale: float = key(1.0, "s: beta_t = s * schedule(t)")
    noise_kind: str = key("gaussian", "gaussian | dim_mask", choices=("gaussian", "dim_mask"))
    normalize_scale: bool = key(True, "diffuse v0 / running RMS, rescale after")
    start_step: int = key(0, "T' (0 = T)", ge=0)
    reverse_steps: int = key(1, "S (0 = T'); one step by default: the step training runs (see docs/models/dmi.md)",
                             ge=0)
    sampler: str = key("posterior_mean", "posterior_mean (deterministic) | ancestral (seeded DDPM steps)",
                       choices=("posterior_mean", "ancestral"))
    prediction: str = key("x0_residual", "x0_residual (a correction to v_t / sqrt(abar_t), starts as the identity) "
                                         "| x0", choices=("x0_residual", "x0"))
    fusion_weight: float = key(0.2, "u = w * refined + (1 - w) * coarse; 0 = no diffusion (the backbone)", ge=0, le=1)
    dmi_keys: str = key("items", "comma list of items | neighbours | others: what the denoiser attends to")
    dmi_target: str = key("interest", "interest (rebuild itself, the figure) | next_item (reconstruct the target)",
                          choices=("interest", "next_item"))
    dmi_output: str = key("fuse", "fuse (fusion_weight) | extra (K generated vectors as K more queries)",
                          choices=("fuse", "extra"))
    cond_dropout: float = key(0.0, "next_item: share of training examples whose keys are all masked", ge=0, le=1)
    guidance: float = key(1.0, "next_item: classifier-free guidance weight w at evaluation (1 = conditional)", ge=0)
    prune: str = key("topm", "topm | threshold | none", choices=("topm", "threshold", "none"))
    prune_m: int = key(5, "item pruning: the top-m history items of each interest are the denoiser's keys", gt=0)
    denoiser: str = key("attention", "attention | mlp", choices=("attention", "mlp"))
    denoiser_blocks: int = key(1, "cross-attention blocks of DMI's denoiser")
    denoiser_heads: int = key(2, "attention heads of DMI's denoiser")
    step_token: bool = key(True, "DMI's diffusion-step token among the keys")
    recon_weight: float = key(1.0, "tuned on beauty validation users (0.1 first); configs/bench/dmi_tune.yaml")
    no_noise: bool = key(False, "ablation: same denoiser, t=0")
    train_chain: bool = key(False, "unroll the reverse chain from t in training")
    refiner_lr_scale: float = key(1.0, "learning-rate factor of DMI's refiner")
    freeze_backbone_steps: int = key(0, "steps during which the backbone is frozen (warm start from init_from)")
    bank_train_sample: int = key(2048, "neighbour keys in training: bank users searched per step (0 = all)", ge=0)


class ItemItem(Section):
    """What the item-to-item models share (fitted in closed form; a user's whole history scores items)."""

    history_decay: float = key(0.0, "history item weight exp(-decay * age) for the item-to-item models", ge=0)


class ItemKNN(Section):
    """ItemKNN (docs/classical.md)."""

    itemknn_shrink: float = key(10.0, "cosine shrinkage: <x_i, x_j> / (|x_i| |x_j| + shrink)", ge=0)
    itemknn_neighbours: int = key(200, "neighbours kept per item (the matrix is sparse: N x this)", gt=0)


class RP3beta(Section):
    """RP3beta (docs/classical.md)."""

    rp3beta_alpha: float = key(0.5, "walk probabilities to this power", gt=0)
    rp3beta_beta: float = key(0.25, "the target item divided by its popularity to this power", ge=0)
    rp3beta_neighbours: int = key(200, "targets kept per item", gt=0)


class EASE(Section):
    """EASE (docs/classical.md)."""

    ease_lambda: float = key(200.0, "L2 weight of EASE's closed form", gt=0)
    ease_neighbours: int = key(500, "entries kept per item of EASE's dense matrix (0 = keep it dense)", ge=0)
    ease_max_items: int = key(50_000, "EASE refuses larger catalogues (a dense N x N inverse)", gt=0)


@dataclass(frozen=True)
class SectionSpec:
    """A section, its name in help and errors, and the models that read it."""

    name: str
    model: type[Section]
    readers: tuple[str, ...]  # model names, or (EVERY_MODEL,)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.model.model_fields)


SA_MODELS = ("comirec-sa", "remi")
ITEM_ITEM = ("itemknn", "rp3beta", "ease")

#: Every section in the order of help and of a saved config.yaml; each key belongs to exactly one.
SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("run", Run, (EVERY_MODEL,)),
    SectionSpec("size", Size, (EVERY_MODEL,)),
    SectionSpec("training", Training, (EVERY_MODEL,)),
    SectionSpec("evaluation", Evaluation, (EVERY_MODEL,)),
    SectionSpec("neighbour rule", NeighbourRule, (EVERY_MODEL,)),
    SectionSpec("repeats", Repeats, (EVERY_MODEL,)),
    SectionSpec("self-attention", SelfAttention, SA_MODELS),
    SectionSpec("capsule routing", CapsuleRouting, ("comirec-dr", "mind")),
    SectionSpec("mind", Mind, ("mind",)),
    SectionSpec("remi scheme", RemiScheme, ("remi", "coin")),
    SectionSpec("coin", Coin, ("coin",)),
    SectionSpec("sasrec", SASRec, ("sasrec",)),
    SectionSpec("dmi", DMI, ("dmi",)),
    SectionSpec("item-item", ItemItem, ITEM_ITEM),
    SectionSpec("itemknn", ItemKNN, ("itemknn",)),
    SectionSpec("rp3beta", RP3beta, ("rp3beta",)),
    SectionSpec("ease", EASE, ("ease",)),
)

#: Values a model name implies unless the user sets them: the settings the zoo's numbers were
#: measured with. A wrapper (DMI) takes its backbone's first, then its own.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "remi": {"hard_negative_beta": 1.0, "routing_reg": 100.0},
    # DMI on REMI with T' = T = 10 spelt out (configs of record)
    "dmi": {"backbone": "remi", "start_step": 10},
    # COIN's own code scores 40,000 bank entries per step with PyTorch's default FFN width 2048 on a GPU;
    # a sample of 8,192 and a width of 256 bound the CPU cost (the benchmarked COIN)
    "coin": {"hard_negative_beta": 1.0, "routing_reg": 100.0, "neighbour_alpha": 0.55, "neighbours": 3,
             "coin_bank_sample": 8192, "coin_ff_dim": 256},
    "youtube-dnn": {"num_interests": 1},
    "sasrec": {"num_interests": 1},
    "most-popular": {"num_interests": 1, "max_steps": 0},
    "repeat": {"num_interests": 1, "max_steps": 0},
    "itemknn": {"num_interests": 1, "max_steps": 0},
    "ease": {"num_interests": 1, "max_steps": 0},
    "rp3beta": {"num_interests": 1, "max_steps": 0},
}


def fields() -> dict[str, tuple[SectionSpec, Any]]:
    """Every key in schema order: ``{key: (its section, its pydantic FieldInfo)}``."""
    return {name: (spec, info) for spec in SECTIONS for name, info in spec.model.model_fields.items()}


def section_of(key_name: str) -> SectionSpec:
    """The section that holds ``key_name`` (KeyError for an unknown key)."""
    return fields()[key_name][0]


def sections_read(model: str, backbone: str | None = None) -> tuple[SectionSpec, ...]:
    """The sections ``model`` reads: the common ones, its own, and, for a wrapper, its backbone's."""
    names = {model} | ({backbone} if model in WRAPPERS and backbone else set())
    return tuple(s for s in SECTIONS if EVERY_MODEL in s.readers or names & set(s.readers))


def readers_of(key_name: str) -> tuple[str, ...]:
    """The models that read ``key_name``, wrappers included for the sections of what they can wrap."""
    readers = section_of(key_name).readers
    if EVERY_MODEL in readers:
        return MODELS
    return tuple(readers) + wrappers_of(readers)


def wrappers_of(readers: tuple[str, ...]) -> tuple[str, ...]:
    """The wrappers that read a section of ``readers`` through a backbone."""
    return tuple(w for w in WRAPPERS if w not in readers and set(readers) & set(BACKBONES))


def keys_not_read(model: str, backbone: str | None, keys: list[str]) -> list[str]:
    """Those of ``keys`` that no section read by ``model`` (on ``backbone``) holds."""
    read = {k for s in sections_read(model, backbone) for k in s.keys}
    return [k for k in keys if k not in read]


def model_defaults(model: str, backbone: str | None = None) -> dict[str, Any]:
    """Config values implied by a model name (and, for wrappers, by their backbone)."""
    if model not in WRAPPERS:
        backbone = None  # only a wrapper reads one
    out: dict[str, Any] = {}
    own = MODEL_DEFAULTS.get(model, {})
    if "backbone" in own or backbone is not None:
        out.update(MODEL_DEFAULTS.get(backbone or own.get("backbone", ""), {}))
    out.update(own)
    if backbone is not None:
        out["backbone"] = backbone
    out["model"] = model
    return out
