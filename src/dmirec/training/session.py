"""Everything of a training run around its loop (:func:`dmirec.training.train._train`).

:func:`open_session` builds the run once, in a fixed order (every random stream's draws depend on
it): the strategy (:mod:`dmirec.training.strategy`), the model, the batch sampler and negatives,
the optimiser, the DDP wrapper; then the run directory, started or restored from
``checkpoints/last.pt`` (:func:`restore`). :func:`start` validates step 0 when a warm start or a
model with nothing to train is a candidate. Every ``eval_every`` steps :func:`validate` searches
the valid users, records the row and decides (best, patience), and :func:`save_last` writes the
checkpoint a resume starts from; :func:`finish` tests the best checkpoint and writes the result.

Rank 0 decides and writes; with several ranks the others receive its decisions (the collectives
of :class:`~dmirec.training.distributed.ddp.Context` are no-ops in one process).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..collab.neighbours import fill_bank
from ..config import Config, ConfigError
from ..data.dataset import PreparedData, load_dataset
from ..data.sampler import EvalSet, TrainSampler, valid_split
from ..evaluation.evaluate import evaluate_model, metric_cutoffs
from ..models import build_model
from ..models.base import item_table_on_meta
from ..objectives.losses import NegativeSampler
from ..runs import rundir
from . import optim, tblog
from .distributed.ddp import Context
from .strategy import Strategy, choose

RESUME_KEYS = ("max_steps", "progress", "threads", "device")  # what a resume may change
RANK_SEED = 7919  # rank r > 0 seeds its own streams with seed + RANK_SEED * r


@dataclass
class Window:
    """The training steps since the last validation: their losses, count and seconds.

    The losses stay tensors until the window is read (:meth:`mean_loss`, at validation): a step never
    waits for the device to hand its loss to Python, and several ranks reduce the window's losses in
    one collective instead of one per step."""

    losses: list[torch.Tensor] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    def add(self, loss: torch.Tensor, seconds: float) -> None:
        self.losses.append(loss.detach())
        self.steps += 1
        self.seconds += seconds

    def mean_loss(self, ctx: Context) -> float:
        """The mean over the window's steps of the global batch's loss (each step's loss averaged
        over the ranks); every rank calls it. Summed step by step in float64, in step order."""
        if not self.losses:
            return 0.0
        per_step = ctx.mean_each(torch.stack(self.losses).to("cpu", torch.float64))  # (steps,)
        total = 0.0
        for value in per_step:
            total += value
        return total / self.steps


@dataclass
class Session:
    """One training run's objects, built by :func:`open_session`."""

    cfg: Config
    data: PreparedData
    run_dir: Path
    device: torch.device
    ctx: Context
    strategy: Strategy
    model: nn.Module
    popularity: np.ndarray  # (N + 1,) train-split counts, saved with every checkpoint
    sampler: TrainSampler
    negatives: NegativeSampler
    neg_gen: torch.Generator
    neg_seed: int
    optimizer: Any  # None for a model with nothing to train
    ddp: nn.Module | None  # the loss under DDP (several ranks), else None
    valid_set: EvalSet | None  # None on ranks that do not search
    tb: Any  # TensorBoard writer of rank 0, or None
    state: dict[str, Any]  # step, best, best_step, bad, train_seconds, sequences, stopped (saved in last.pt)

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def trainable(self) -> bool:
        return self.optimizer is not None

    @property
    def has_bank(self) -> bool:
        """Whether the model reads an interest bank (the step passes the batch's users)."""
        return getattr(self.model, "bank", None) is not None

    @property
    def share(self) -> slice:
        """This rank's rows of every global batch (all of them in one process)."""
        return self.ctx.share(self.cfg.batch_size)


def open_session(cfg: Config, data_dir: str | Path, run_dir: str | Path, resume: bool, device: torch.device,
                 ctx: Context, loss_fn: Callable[..., torch.Tensor]) -> Session:
    """Set a run up (``resume``: from its last checkpoint). ``loss_fn`` is
    :func:`dmirec.training.train.loss_with_negatives`, which the DDP wrapper calls."""
    strategy = choose(cfg, ctx)
    strategy.check(cfg, device)
    data = load_dataset(data_dir, mmap=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    popularity = data.item_popularity("train")
    model = _build_model(cfg, data.num_items, popularity, device, strategy)
    if cfg.init_from and not resume:  # before anything is written: a bad source leaves no run behind
        warm_start(model, cfg, strategy)
    if ctx.rank > 0:  # ranks draw their own model noise (DMI); rank 0 keeps the single-process stream
        torch.manual_seed(cfg.seed + RANK_SEED * ctx.rank)
    tb = tblog.open_writer(Path(run_dir) / "tensorboard") if cfg.tensorboard and ctx.main else None
    sampler = TrainSampler(data.splits["train"], cfg.batch_size, cfg.seq_len, cfg.min_cut, seed=cfg.seed)
    negatives = NegativeSampler(data.num_items, cfg.negative_sampler, device)
    neg_seed = cfg.seed + 1 + (RANK_SEED * ctx.rank if cfg.dist_negatives == "rank" else 0)
    neg_gen = torch.Generator(device=device).manual_seed(neg_seed)
    trainable = getattr(model, "trainable", True) and cfg.max_steps > 0
    optimizer = strategy.make_optimizer(model, cfg) if trainable else None
    valid_set = valid_split(data.splits["valid"], cfg) if strategy.searches else None
    ddp = strategy.wrap(model, cfg, _rank_loss(loss_fn, cfg, negatives), device) if trainable else None
    state = {"step": 0, "best": -1.0, "best_step": 0, "bad": 0, "train_seconds": 0.0, "sequences": 0,
             "stopped": None}
    s = Session(cfg, data, Path(run_dir), device, ctx, strategy, model, popularity, sampler, negatives, neg_gen,
                neg_seed, optimizer, ddp, valid_set, tb, state)
    restore(s) if resume else _start_run_dir(s)
    return s


def _build_model(cfg: Config, num_items: int, popularity: np.ndarray, device: torch.device,
                 strategy: Strategy) -> nn.Module:
    """The model on ``device``, its item table drawn whole, blocked, or as this rank's rows only."""
    blocked = cfg.table_init == "blocked" or (cfg.table_init == "auto" and cfg.sharded_embeddings)
    with item_table_on_meta() if blocked else contextlib.nullcontext():  # no whole table drawn (or held)
        model = build_model(cfg, num_items, popularity)
    strategy.place_table(model, cfg, blocked)
    model = model.to(device)
    optim.setup_table(model, cfg, num_items, distributed=strategy.ctx.active)
    return model


def _rank_loss(loss_fn: Callable[..., torch.Tensor], cfg: Config, negatives: NegativeSampler):
    """``loss_fn`` as the DDP wrapper calls it: ``(model, history, mask, target, neg_ids, users)``."""
    log_probs = negatives.log_probs if cfg.logq_correction else None

    def loss(m, history, mask, target, neg_ids, users):
        return loss_fn(m, cfg, history, mask, target, neg_ids, log_probs, users)
    return loss


def warm_start(model: nn.Module, cfg: Config, strategy: Strategy) -> Path:
    """Load ``cfg.init_from`` (a run directory's best checkpoint, or a checkpoint file) into the
    model, or into its backbone when the model is a wrapper (DMI); returns the checkpoint path."""
    source = Path(cfg.init_from)
    ckpt_path = source / "checkpoints" / "best.pt" if source.is_dir() else source
    if not ckpt_path.is_file():
        raise ConfigError(f"config key 'init_from': no checkpoint at {ckpt_path}")
    # a sharded run reads its rows from the source's table files, never its whole table
    ckpt = rundir.load_checkpoint(ckpt_path, map_location="cpu", assemble=not strategy.sharded)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ConfigError(f"config key 'init_from': {ckpt_path} is not a dmirec checkpoint (no 'model' entry)")
    target = getattr(model, "backbone", model)
    try:
        target.load_state_dict(ckpt["model"])
        if ckpt.get("table_shards"):  # else an unsharded source: its whole table was in the state dict
            strategy.load_table(model, ckpt_path, ckpt)
    except RuntimeError as err:
        what = f"the {cfg.backbone} backbone of {cfg.model}" if target is not model else cfg.model
        raise ConfigError(f"config key 'init_from': the model in {ckpt_path} does not fit {what} "
                          f"(different model, sizes or catalogue): {err}") from None
    return ckpt_path


def _start_run_dir(s: Session) -> None:
    """A new run: rank 0 writes its config, data reference and an empty metrics log."""
    if s.ctx.main:
        s.run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_config(s.run_dir, s.cfg)
        rundir.write_data_ref(s.run_dir, s.data.path, s.data.name, s.data.num_items)
        rundir.rewrite_metrics(s.run_dir, [])


def restore(s: Session) -> None:
    """Continue from ``checkpoints/last.pt``: the model, optimiser, sampler, every random stream and
    the loop's state; rank 0 keeps the metrics rows up to that step."""
    path = s.ckpt_dir / "last.pt"
    # RNG states stay CPU tensors; a sharded table's rows stay in their files until each rank reads its own
    ckpt = rundir.load_checkpoint(path, map_location="cpu", assemble=not s.strategy.sharded)
    rundir.check_config(s.run_dir, s.cfg, ckpt.get("config"), path, RESUME_KEYS)
    try:
        s.model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).splitlines()[1 if len(str(err).splitlines()) > 1 else 0].strip()[:200]
        raise rundir.RunError(f"{path}: does not fit the model of {s.run_dir / 'config.yaml'} "
                              f"(was config.yaml edited after the run started? {first})") from None
    if s.optimizer is not None and ckpt.get("optimizer") is not None:
        s.optimizer.load_state_dict(ckpt["optimizer"])
    s.strategy.load_table(s.model, path, ckpt, moments=True)
    s.sampler.set_state(ckpt["sampler"])
    _restore_streams(s, ckpt)
    s.state.update(ckpt["state"])
    if s.state["stopped"] == "max_steps" and s.state["step"] < s.cfg.max_steps:
        s.state["stopped"] = None  # resumed with a larger max_steps: extend the run
    if s.ctx.main:
        rundir.write_config(s.run_dir, s.cfg)
        rows = [r for r in rundir.read_metrics(s.run_dir) if r.get("split") == "valid" and r["step"] <= s.state["step"]]
        rundir.rewrite_metrics(s.run_dir, rows)


def _restore_streams(s: Session, ckpt: dict[str, Any]) -> None:
    """This rank's negatives and torch generators: its own saved streams when the run had as many
    ranks, rank 0's (or, with ``dist_negatives=global``, everyone's) single-process streams, or, for
    a rank the run did not have, fresh streams seeded by rank and step."""
    cfg, ctx, step = s.cfg, s.ctx, ckpt["state"]["step"]
    ranks = ckpt.get("rank_rng")
    if ranks is not None and len(ranks) == ctx.world:
        neg_state, torch_state = ranks[ctx.rank]
    elif ctx.rank == 0 or cfg.dist_negatives == "global":
        neg_state, torch_state = ckpt["neg_gen"], ckpt["torch_rng"]
    else:
        neg_state = torch.Generator(device=s.device).manual_seed(s.neg_seed + step).get_state()
        torch_state = torch.Generator().manual_seed(cfg.seed + RANK_SEED * ctx.rank + step).get_state()
    s.neg_gen.set_state(neg_state)
    torch.set_rng_state(torch_state)
    if s.device.type == "cuda" and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ckpt["cuda_rng"])


def save(s: Session, name: str, payload: Callable[[], dict]) -> None:
    """``checkpoints/NAME.pt`` written by rank 0; with a sharded table every rank first writes its
    rows to its own file, which NAME.pt then lists (:meth:`~dmirec.training.strategy.Single.save_table`)."""
    manifest = s.strategy.save_table(s.model, s.ckpt_dir, name, s.state["step"])
    if not s.ctx.main:
        return
    obj = payload()
    if manifest is not None:
        obj["table_shards"] = manifest
    rundir.save_checkpoint(s.ckpt_dir / f"{name}.pt", obj)
    if manifest is not None:
        s.strategy.remove_stale(s.ckpt_dir, name, manifest)


def save_last(s: Session) -> None:
    """``last.pt``: everything a resume needs (every rank's random streams when there are several)."""
    ranks = s.ctx.gather((s.neg_gen.get_state(), torch.get_rng_state())) if s.ctx.active else None
    extra = {"rank_rng": ranks} if ranks is not None else {}
    save(s, "last", lambda: {**extra,
        "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict() if s.optimizer is not None else None,
        "sampler": s.sampler.state(),
        "neg_gen": s.neg_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if s.device.type == "cuda" else None,
        "state": dict(s.state),
        "popularity": torch.from_numpy(s.popularity),
        "config": s.cfg.to_dict(),
    })


def save_best(s: Session, metrics: dict | None) -> None:
    """``best.pt``: the model that scored ``metrics`` on validation (rank 0's)."""
    save(s, "best", lambda: {"model": s.model.state_dict(), "step": s.state["step"], "valid": metrics,
                             "popularity": torch.from_numpy(s.popularity), "config": s.cfg.to_dict()})


def refresh_bank(s: Session) -> None:
    """The interest bank from the current model (training users only); it is part of the model's
    state, so checkpoints keep the bank their validation used."""
    if s.has_bank:
        fill_bank(s.model, s.cfg, s.data.splits["train"], s.device)


def validate(s: Session, window: Window) -> dict | None:
    """Search the valid users and decide: rank 0 validates (with a sharded table every rank searches
    its rows), a better model is saved as best, and the other ranks receive rank 0's state (best,
    patience, stop). Returns rank 0's metrics row (None on the other ranks)."""
    if s.optimizer is not None:  # the last step's gradients are dead (the next step starts with zero_grad):
        s.optimizer.zero_grad(set_to_none=True)  # not held while the search needs the memory
    refresh_bank(s)  # every rank: the bank is model state the next steps read
    cfg = s.cfg
    metrics = evaluate_model(s.model, s.data, "valid", cfg.seq_len, metric_cutoffs(cfg), cfg.retrieval_backend,
                             cfg.exclude_history, cfg.eval_batch_size, device=s.device, eval_set=s.valid_set,
                             new_items_only=cfg.new_items_only) if s.valid_set is not None else None
    improved = s.ctx.broadcast(metrics["recall@50"] > s.state["best"] if s.ctx.main else None)
    if improved:
        save_best(s, metrics)
    loss = window.mean_loss(s.ctx)  # every rank: one collective over the window's losses
    row = _record(s, metrics, improved, window, loss) if s.ctx.main else None
    if s.ctx.active:
        s.state.update(s.ctx.broadcast(dict(s.state)))
    return row


def _record(s: Session, metrics: dict, improved: bool, window: Window, loss: float) -> dict:
    """Rank 0: update best and patience, append the metrics row (and log it), stop on patience."""
    state = s.state
    if improved:
        state.update(best=metrics["recall@50"], best_step=state["step"], bad=0)
    else:
        state["bad"] += 1
    row = {"split": "valid", "step": state["step"], "loss": loss,
           "train_seq_per_s": s.cfg.batch_size * window.steps / window.seconds if window.seconds > 0 else None,
           **metrics, "best_step": state["best_step"]}
    rundir.append_metrics(s.run_dir, row)
    if s.tb is not None:
        tblog.log_row(s.tb, row, "valid")
    if state["bad"] > s.cfg.patience > 0:  # the reference's `trials > patience`
        state["stopped"] = "patience"
    return row


def start(s: Session) -> None:
    """Before the first step of a new run: a warm start is validated as step 0 (training must beat
    it), a model with nothing to train is fitted (item-to-item models) and validated, and a fresh
    interest bank is filled, since training reads it from step 1."""
    no_best = s.ctx.broadcast(not (s.ckpt_dir / "best.pt").exists())
    fresh = s.state["step"] == 0 and no_best
    if s.cfg.init_from and s.trainable and fresh:
        validate(s, Window())
        save_last(s)
    if not s.trainable and fresh:
        if hasattr(s.model, "fit"):  # item-to-item models: closed form on the training users
            s.model.fit(s.data.splits["train"])
        validate(s, Window())
        s.state["stopped"] = "nothing to train"
        save_last(s)
    if s.has_bank and s.model.bank.size == 0:
        refresh_bank(s)


def count_step(s: Session, seconds: float) -> None:
    """One optimisation step taken (of ``batch_size`` sequences over all ranks) in ``seconds``."""
    s.state["step"] += 1
    s.state["sequences"] += s.cfg.batch_size
    s.state["train_seconds"] += seconds


def finish(s: Session) -> dict[str, Any] | None:
    """Test the best checkpoint (rank 0; with a sharded table every rank searches its rows), append
    the test row and write ``result.json``; every rank returns rank 0's result."""
    cfg, ctx, state = s.cfg, s.ctx, s.state
    if not s.strategy.searches:
        return ctx.broadcast(None)
    path = s.ckpt_dir / "best.pt"
    best = rundir.load_checkpoint(path, map_location="cpu", assemble=not s.strategy.sharded)
    s.model.load_state_dict(best["model"])
    s.strategy.load_table(s.model, path, best)
    test = evaluate_model(s.model, s.data, "test", cfg.seq_len, metric_cutoffs(cfg), cfg.retrieval_backend,
                          cfg.exclude_history, cfg.eval_batch_size, device=s.device, new_items_only=cfg.new_items_only)
    if not ctx.main:
        return ctx.broadcast(None)
    result = {"model": cfg.model, "dataset": s.data.name, "seed": cfg.seed, "steps": state["step"],
              "best_step": state["best_step"], "stopped": state["stopped"], "valid_recall@50": state["best"],
              "train_seconds": state["train_seconds"],
              "train_seq_per_s": state["sequences"] / state["train_seconds"] if state["train_seconds"] else None,
              "test": test}
    rundir.append_metrics(s.run_dir, {"split": "test", "step": state["best_step"], **test})
    if s.tb is not None:
        tblog.log_row(s.tb, {"step": state["best_step"], **test}, "test")
        s.tb.close()
    rundir.atomic_write_text(s.run_dir / "result.json", json.dumps(result, indent=2))
    return ctx.broadcast(result)
