"""The training loop: step-budgeted, validated, early-stopped and resumable.

One call of :func:`train` samples protocol batches, optimises the sampled-softmax loss (plus
the model's auxiliary loss and REMI's routing regulariser when enabled), validates every
``eval_every`` steps on valid users with exact retrieval, keeps the checkpoint with the best
valid Recall@50, stops after ``patience`` validations without improvement or at ``max_steps``,
and finally evaluates the best checkpoint on test users. Every random stream (batch sampler,
negatives, torch's global generator) is seeded from ``cfg.seed`` and saved in the checkpoint, so
a resumed run retraces exactly the steps an uninterrupted one would have taken.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..runs import rundir
from . import optim, session
from .compiled import maybe_compiled
from .distributed import ddp as distrib
from .session import RESUME_KEYS, warm_start  # noqa: F401 (re-exported)
from ..config import Config, ConfigError, make_config, model_defaults  # noqa: F401 (re-exported)
from ..data.sampler import TrainSampler, eval_split, valid_split  # noqa: F401 (eval_split re-exported)
from ..objectives.losses import NegativeSampler, sampled_softmax_loss


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': 'cuda' requested but torch sees no CUDA device "
                          "(use --device cpu or auto)")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, cfg: Config):
    """Fused Adam over every parameter; SparseAdam for the item table when it is sparse (:mod:`dmirec.training.optim`)."""
    return optim.make_optimizer(model, cfg)


def batch_loss(model: torch.nn.Module, cfg: Config, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
               negatives: NegativeSampler, neg_gen: torch.Generator, users: torch.Tensor | None = None) -> torch.Tensor:
    """The training objective of one batch: sampled softmax + the model's aux loss (REMI's routing
    regulariser among its terms).

    ``users (B,)``: the batch's train-split rows, for models that read the interest bank (their
    own entry is left out)."""
    neg_ids = negatives.sample(cfg.num_negatives, neg_gen)  # (S,)
    log_probs = negatives.log_probs if cfg.logq_correction else None
    loss_fn = maybe_compiled(loss_with_negatives, cfg.compile)
    return loss_fn(model, cfg, history, mask, target, neg_ids, log_probs, users)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, batch, negatives: NegativeSampler,
               neg_gen: torch.Generator, device: torch.device | str, *, share: slice = slice(None),
               use_users: bool = False, ddp=None) -> torch.Tensor:
    """One optimisation step on this rank's ``share`` of a sampled batch; returns the loss.

    The one training step of the package: the training loop and the speed benchmarks run it.
    ``use_users`` passes the batch's train-split rows (models reading the interest bank); ``ddp``
    is the data-parallel wrapper of :mod:`dmirec.training.distributed.ddp` when several processes train."""
    history = torch.from_numpy(batch.history[share]).to(device)  # (B / P, L)
    mask = torch.from_numpy(batch.mask[share]).to(device)  # (B / P, L)
    target = torch.from_numpy(batch.target[share]).to(device)  # (B / P,)
    users = torch.from_numpy(batch.rows[share]).to(device) if use_users else None  # (B / P,)
    with autocast(cfg, device):
        if ddp is None:
            loss = batch_loss(model, cfg, history, mask, target, negatives, neg_gen, users)
        else:
            loss = ddp(history, mask, target, negatives.sample(cfg.num_negatives, neg_gen), users)
    optimizer.zero_grad(set_to_none=True)
    optim.prepare_table_grad(model)
    loss.backward()
    optim.finish_table_grad(model)
    optimizer.step()
    return loss


def loss_with_negatives(model: torch.nn.Module, cfg: Config, history: torch.Tensor, mask: torch.Tensor,
                        target: torch.Tensor, neg_ids: torch.Tensor, log_probs: torch.Tensor | None,
                        users: torch.Tensor | None = None) -> torch.Tensor:
    """Sampled softmax against ``neg_ids`` + the model's aux loss (its own terms and REMI's routing
    regulariser: one route for every auxiliary loss)."""
    out = model.train_forward(history, mask, target, users) if users is not None else \
        model.train_forward(history, mask, target)
    loss = sampled_softmax_loss(out.user, target, neg_ids, optim.item_lookup(model), log_probs,
                                cfg.remove_accidental_hits, cfg.hard_negative_beta)
    return loss + out.aux_loss


def autocast(cfg: Config, device: torch.device):
    """bfloat16 autocast of the forward pass and loss when ``cfg.bf16`` (a no-op context otherwise)."""
    if not cfg.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _bar_interval() -> float:
    """Seconds between progress-bar refreshes: 1 on a terminal, 30 when stderr is a log file."""
    try:
        return 1.0 if sys.stderr.isatty() else 30.0
    except (AttributeError, ValueError):
        return 30.0


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path, resume: bool = False,
          callback: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on the prepared dataset ``data_dir``; returns the test metrics.

    ``callback(step)`` is called after every optimisation step (tests use it to interrupt a run).
    The run directory is locked while training (:func:`dmirec.runs.rundir.run_lock`, held by rank 0): a
    second process training or resuming the same run is refused. Started by torchrun, the process
    joins its process group and trains its share of every batch (:mod:`dmirec.training.distributed.ddp`); every rank
    returns rank 0's result.
    """
    device = resolve_device(cfg.device)
    ctx = distrib.setup(device.type)
    try:
        if ctx.active and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
        if ctx.main:
            with rundir.run_lock(run_dir):
                return _train(cfg, data_dir, run_dir, resume, callback, device, ctx)
        return _train(cfg, data_dir, run_dir, resume, callback, device, ctx)
    finally:
        ctx.close()


def _train(cfg: Config, data_dir: str | Path, run_dir: str | Path, resume: bool,
           callback: Callable[[int], None] | None, device: torch.device, ctx: distrib.Context) -> dict[str, Any]:
    """The loop: set the run up (or restore it), step until it stops (patience) or reaches
    ``max_steps``, validating and checkpointing every ``eval_every`` steps, then test the best
    checkpoint. What differs between one process, DDP and a sharded table is the session's
    strategy (:mod:`dmirec.training.strategy`); the rest is in :mod:`dmirec.training.session`."""
    run = session.open_session(cfg, data_dir, run_dir, resume, device, ctx, loss_with_negatives)
    session.start(run)  # step 0: a warm start, or a model with nothing to train, is validated
    state, window = run.state, session.Window()
    bar = _progress_bar(cfg, state["step"], ctx.main)
    run.model.train()
    while run.trainable and state["stopped"] is None and state["step"] < cfg.max_steps:
        tick = time.perf_counter()
        loss = train_step(run.model, run.optimizer, cfg, run.sampler.sample(), run.negatives, run.neg_gen, device,
                          share=run.share, use_users=run.has_bank, ddp=run.ddp)
        seconds = time.perf_counter() - tick
        session.count_step(run, seconds)
        window.add(loss, seconds)  # read at validation: no host synchronisation per step
        bar.update(1)
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.max_steps:
            row = session.validate(run, window)
            window = session.Window()
            if state["step"] >= cfg.max_steps and state["stopped"] is None:
                state["stopped"] = "max_steps"
            session.save_last(run)
            _show(bar, row, state)
        if callback is not None:
            callback(state["step"])
    bar.close()
    if state["stopped"] is None:
        state["stopped"] = "max_steps"
        session.save_last(run)
    return session.finish(run)


def _progress_bar(cfg: Config, step: int, main: bool) -> tqdm:
    """The step bar (rank 0, ``progress``), refreshed every :func:`_bar_interval` seconds."""
    return tqdm(total=cfg.max_steps, initial=step, disable=not (cfg.progress and main), unit="step",
                dynamic_ncols=True, desc=f"{cfg.model}", mininterval=_bar_interval())


def _show(bar: tqdm, row: dict | None, state: dict[str, Any]) -> None:
    """A validation row on the bar (rank 0 only has one)."""
    if row is not None:
        bar.set_postfix({"valid_R@50": f"{row['recall@50']:.4f}", "best": f"{state['best']:.4f}",
                         "seq/s": f"{row['train_seq_per_s'] or 0:.0f}"})


def resume(run_dir: str | Path, callback: Callable[[int], None] | None = None,
           overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Continue an interrupted run from its last checkpoint, with its saved config and data.

    The data folder must hold what the run was trained on (:func:`dmirec.runs.rundir.check_data`) and
    ``config.yaml`` must equal the config of the last checkpoint (an edited key is refused, named).

    ``overrides`` may change only :data:`RESUME_KEYS`; a larger ``max_steps`` extends a run that
    stopped at its step budget (a run stopped by early stopping cannot be extended). An override
    that changes nothing is an error.
    """
    run_dir = Path(run_dir)
    cfg = rundir.read_config(run_dir)
    data_ref = rundir.read_data_ref(run_dir)
    rundir.check_data(run_dir)  # the data folder prepared again since (another seed or log) is refused
    if overrides:
        cfg = _resume_config(run_dir, cfg, overrides)
    if not (run_dir / "checkpoints" / "last.pt").exists():
        return train(cfg, data_ref["path"], run_dir, resume=False, callback=callback)
    return train(cfg, data_ref["path"], run_dir, resume=True, callback=callback)


def _resume_config(run_dir: Path, cfg: Config, overrides: dict[str, Any]) -> Config:
    """The saved config with the resume overrides applied, refusing what cannot apply."""
    bad = sorted(set(k.replace("-", "_") for k in overrides) - set(RESUME_KEYS))
    if bad:
        raise ConfigError(f"--resume: {', '.join(bad)} cannot change when resuming (the run's config.yaml is "
                          f"used as is; only {', '.join(RESUME_KEYS)} may be given)")
    new = cfg.replace(**{k.replace("-", "_"): v for k, v in overrides.items()})
    same = [k for k in overrides if getattr(new, k.replace("-", "_")) == getattr(cfg, k.replace("-", "_"))]
    if same:
        raise ConfigError(f"--resume: {', '.join(f'{k}={overrides[k]}' for k in same)} changes nothing "
                          f"(the run already has that value)")
    if new.max_steps != cfg.max_steps:
        last = run_dir / "checkpoints" / "last.pt"
        state = rundir.load_checkpoint(last, assemble=False)["state"] if last.exists() else {"step": 0, "stopped": None}
        if new.max_steps < state["step"]:
            raise ConfigError(f"--resume: max_steps={new.max_steps} is below the {state['step']} steps "
                              f"{run_dir} has already trained")
        if state["stopped"] in ("patience", "nothing to train"):
            raise ConfigError(f"--resume: {run_dir} stopped by {state['stopped']} at step {state['step']}; "
                              f"more steps would not train it (start a new run to change the schedule)")
    return new
