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
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..runs import rundir
from . import optim, tblog
from .compiled import maybe_compiled
from .distributed import ddp as distrib
from .distributed import sharded, sharded_checkpoint, sharded_optim
from ..config import Config, ConfigError, make_config, model_defaults  # noqa: F401 (re-exported)
from ..data.dataset import load_dataset
from ..data.sampler import TrainSampler, eval_split, valid_split  # noqa: F401 (eval_split re-exported)
from ..evaluation.evaluate import evaluate_model, metric_cutoffs
from ..objectives.losses import NegativeSampler, sampled_softmax_loss
from ..models import build_model, set_routing_reg
from ..models.base import fill_blocked_table, item_table_on_meta
from ..collab.neighbours import fill_bank


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


def warm_start(model: torch.nn.Module, cfg: Config, device: torch.device) -> Path:
    """Load ``cfg.init_from`` (a run directory's best checkpoint, or a checkpoint file) into the
    model, or into its backbone when the model is a wrapper (DMI); returns the checkpoint path."""
    source = Path(cfg.init_from)
    ckpt_path = source / "checkpoints" / "best.pt" if source.is_dir() else source
    if not ckpt_path.is_file():
        raise ConfigError(f"config key 'init_from': no checkpoint at {ckpt_path}")
    is_sharded = sharded.is_sharded(model)  # rows from the source's table files, never its whole table
    ckpt = rundir.load_checkpoint(ckpt_path, map_location="cpu", assemble=not is_sharded)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ConfigError(f"config key 'init_from': {ckpt_path} is not a dmirec checkpoint (no 'model' entry)")
    target = getattr(model, "backbone", model)
    try:
        target.load_state_dict(ckpt["model"])
        if is_sharded and ckpt.get("table_shards"):
            sharded_checkpoint.load_table(model.item_emb, ckpt_path.parent, ckpt["table_shards"])
    except RuntimeError as err:
        what = f"the {cfg.backbone} backbone of {cfg.model}" if target is not model else cfg.model
        raise ConfigError(f"config key 'init_from': the model in {ckpt_path} does not fit {what} "
                          f"(different model, sizes or catalogue): {err}") from None
    return ckpt_path


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
    run_dir = Path(run_dir)
    if ctx.active and cfg.batch_size % ctx.world:
        raise ConfigError(f"config key 'batch_size': {cfg.batch_size} does not split evenly over {ctx.world} ranks")
    sharded.check(cfg, ctx.world, device)
    data = load_dataset(data_dir, mmap=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    popularity = data.item_popularity("train")
    blocked = cfg.table_init == "blocked" or (cfg.table_init == "auto" and cfg.sharded_embeddings)
    with item_table_on_meta() if blocked else contextlib.nullcontext():  # no whole table drawn (or held)
        model = build_model(cfg, data.num_items, popularity)
    if cfg.sharded_embeddings:  # each rank draws and keeps its rows of the table (dmirec.training.distributed.sharded)
        sharded.install(model, cfg.seed, cfg.table_lr if cfg.embedding_optimizer == "rowwise_adagrad" else None)
    elif blocked:
        fill_blocked_table(model, cfg.seed)
    model = model.to(device)
    optim.setup_table(model, cfg, data.num_items, distributed=ctx.active)
    if cfg.init_from and not resume:  # before anything is written: a bad source leaves no run behind
        warm_start(model, cfg, device)
    if ctx.rank > 0:  # ranks draw their own model noise (DMI); rank 0 keeps the single-process stream
        torch.manual_seed(cfg.seed + 7919 * ctx.rank)
    has_bank = getattr(model, "bank", None) is not None

    def refresh_bank() -> None:
        """The interest bank from the current model (training users only); it is part of the model's
        state, so checkpoints keep the bank their validation used."""
        if has_bank:
            fill_bank(model, cfg, data.splits["train"], device)
    tb = tblog.open_writer(run_dir / "tensorboard") if cfg.tensorboard and ctx.main else None
    sampler = TrainSampler(data.splits["train"], cfg.batch_size, cfg.seq_len, cfg.min_cut, seed=cfg.seed)
    negatives = NegativeSampler(data.num_items, cfg.negative_sampler, device)
    neg_seed = cfg.seed + 1 + (7919 * ctx.rank if cfg.dist_negatives == "rank" else 0)
    neg_gen = torch.Generator(device=device).manual_seed(neg_seed)
    trainable = getattr(model, "trainable", True) and cfg.max_steps > 0
    make_opt = sharded_optim.make_optimizer if cfg.sharded_embeddings else make_optimizer
    optimizer = make_opt(model, cfg) if trainable else None
    # who validates: rank 0, or every rank when the table is sharded (each searches its own rows)
    valid_set = valid_split(data.splits["valid"], cfg) if ctx.main or cfg.sharded_embeddings else None
    log_probs = negatives.log_probs if cfg.logq_correction else None
    ddp = None
    if ctx.active and trainable:
        # REMI's regulariser is a sum over this rank's users and DDP averages gradients over ranks
        set_routing_reg(model, cfg.routing_reg * ctx.world)

        def loss_fn(m, h, mk, t, neg_ids, users):
            return loss_with_negatives(m, cfg, h, mk, t, neg_ids, log_probs, users)
        ddp = sharded.wrap(model, loss_fn, device) if cfg.sharded_embeddings else \
            distrib.wrap(model, loss_fn, device, find_unused=cfg.model in ("dmi", "coin"))
    ckpt_dir = run_dir / "checkpoints"
    state = {"step": 0, "best": -1.0, "best_step": 0, "bad": 0, "train_seconds": 0.0, "sequences": 0,
             "stopped": None}

    if resume:
        # RNG states stay CPU tensors; a sharded table's rows stay in their files until each rank reads its own
        ckpt = rundir.load_checkpoint(ckpt_dir / "last.pt", map_location="cpu", assemble=not cfg.sharded_embeddings)
        rundir.check_config(run_dir, cfg, ckpt.get("config"), ckpt_dir / "last.pt", RESUME_KEYS)
        try:
            model.load_state_dict(ckpt["model"])
        except (RuntimeError, KeyError, TypeError) as err:
            first = str(err).splitlines()[1 if len(str(err).splitlines()) > 1 else 0].strip()[:200]
            raise rundir.RunError(f"{ckpt_dir / 'last.pt'}: does not fit the model of {run_dir / 'config.yaml'} "
                                  f"(was config.yaml edited after the run started? {first})") from None
        if optimizer is not None and ckpt.get("optimizer") is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        if cfg.sharded_embeddings:
            if not ckpt.get("table_shards"):
                raise rundir.RunError(f"{ckpt_dir / 'last.pt'}: has no item-table files (written by a version "
                                      f"that gathered the sharded table; resume it with that version)")
            sharded_checkpoint.load_table(model.item_emb, ckpt_dir, ckpt["table_shards"], moments=True)
        sampler.set_state(ckpt["sampler"])
        ranks = ckpt.get("rank_rng")
        if ranks is not None and len(ranks) == ctx.world:  # same number of ranks: each its own streams
            neg_state, torch_state = ranks[ctx.rank]
        elif ctx.rank == 0 or cfg.dist_negatives == "global":
            neg_state, torch_state = ckpt["neg_gen"], ckpt["torch_rng"]
        else:  # a new rank count: the other ranks start fresh streams, seeded by rank and step
            neg_state = torch.Generator(device=device).manual_seed(neg_seed + ckpt["state"]["step"]).get_state()
            torch_state = torch.Generator().manual_seed(cfg.seed + 7919 * ctx.rank + ckpt["state"]["step"]).get_state()
        neg_gen.set_state(neg_state)
        torch.set_rng_state(torch_state)
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"])
        state.update(ckpt["state"])
        if state["stopped"] == "max_steps" and state["step"] < cfg.max_steps:
            state["stopped"] = None  # resumed with a larger max_steps: extend the run
        if ctx.main:
            rundir.write_config(run_dir, cfg)
            rows = [r for r in rundir.read_metrics(run_dir) if r.get("split") == "valid" and r["step"] <= state["step"]]
            rundir.rewrite_metrics(run_dir, rows)
    elif ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_config(run_dir, cfg)
        rundir.write_data_ref(run_dir, data.path, data.name, data.num_items)
        rundir.rewrite_metrics(run_dir, [])

    def save(name: str, payload: Callable[[], dict]) -> None:
        """``checkpoints/NAME.pt`` written by rank 0; with a sharded table every rank first writes its
        rows to its own file, which NAME.pt then lists (:func:`dmirec.training.distributed.sharded_checkpoint.save_table`)."""
        manifest = sharded_checkpoint.save_table(model.item_emb, ckpt_dir, name, state["step"], moments=name == "last") \
            if cfg.sharded_embeddings else None
        if not ctx.main:
            return
        obj = payload()
        if manifest is not None:
            obj["table_shards"] = manifest
        rundir.save_checkpoint(ckpt_dir / f"{name}.pt", obj)
        if manifest is not None:
            sharded_checkpoint.remove_stale(ckpt_dir, name, manifest)

    def save_last() -> None:
        ranks = ctx.gather((neg_gen.get_state(), torch.get_rng_state())) if ctx.active else None
        extra = {"rank_rng": ranks} if ranks is not None else {}
        save("last", lambda: {**extra,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "sampler": sampler.state(),
            "neg_gen": neg_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            "state": dict(state),
            "popularity": torch.from_numpy(popularity),
            "config": cfg.to_dict(),
        })

    def validate(window_loss: float, window_steps: int, window_seconds: float) -> dict | None:
        """Rank 0 validates and decides (with a sharded table every rank searches its rows); the other
        ranks receive its state (best, patience, stop), and a better model is saved as best."""
        if optimizer is not None:  # the last step's gradients are dead (the next step starts with zero_grad):
            optimizer.zero_grad(set_to_none=True)  # not held while the search needs the memory
        refresh_bank()  # every rank: the bank is model state the next steps read
        metrics = evaluate_model(model, data, "valid", cfg.seq_len, metric_cutoffs(cfg), cfg.retrieval_backend,
                                 cfg.exclude_history, cfg.eval_batch_size, device=device, eval_set=valid_set,
                                 new_items_only=cfg.new_items_only) if valid_set is not None else None
        improved = ctx.broadcast(metrics["recall@50"] > state["best"] if ctx.main else None)
        if improved:
            save("best", lambda: {"model": model.state_dict(), "step": state["step"], "valid": metrics,
                                  "popularity": torch.from_numpy(popularity), "config": cfg.to_dict()})
        row = _decide(metrics, improved, window_loss, window_steps, window_seconds) if ctx.main else None
        if ctx.active:
            state.update(ctx.broadcast(dict(state)))
        return row

    def _decide(metrics: dict, improved: bool, window_loss: float, window_steps: int, window_seconds: float) -> dict:
        if improved:
            state.update(best=metrics["recall@50"], best_step=state["step"], bad=0)
        else:
            state["bad"] += 1
        row = {"split": "valid", "step": state["step"], "loss": window_loss / max(window_steps, 1),
               "train_seq_per_s": cfg.batch_size * window_steps / window_seconds if window_seconds > 0 else None,
               **metrics, "best_step": state["best_step"]}
        rundir.append_metrics(run_dir, row)
        if tb is not None:
            tblog.log_row(tb, row, "valid")
        if state["bad"] > cfg.patience > 0:  # the reference's `trials > patience`
            state["stopped"] = "patience"
        return row

    no_best = ctx.broadcast(not (ckpt_dir / "best.pt").exists())
    if cfg.init_from and trainable and state["step"] == 0 and no_best:
        validate(0.0, 0, 0.0)  # the warm start itself is a candidate: training must beat it on validation
        save_last()
    if not trainable and state["step"] == 0 and no_best:
        if hasattr(model, "fit"):  # item-to-item models: closed form on the training users
            model.fit(data.splits["train"])
        validate(0.0, 0, 0.0)
        state["stopped"] = "nothing to train"
        save_last()

    if has_bank and model.bank.size == 0:  # a fresh run: training reads the bank from step 1
        refresh_bank()
    bar = tqdm(total=cfg.max_steps, initial=state["step"], disable=not (cfg.progress and ctx.main), unit="step",
               dynamic_ncols=True, desc=f"{cfg.model}", mininterval=_bar_interval())
    window_loss, window_steps, window_seconds = 0.0, 0, 0.0
    model.train()
    share = ctx.share(cfg.batch_size)  # this rank's rows of every global batch (all of them in one process)
    while trainable and state["stopped"] is None and state["step"] < cfg.max_steps:
        tick = time.perf_counter()
        loss = train_step(model, optimizer, cfg, sampler.sample(), negatives, neg_gen, device, share=share,
                          use_users=has_bank, ddp=ddp)
        state["step"] += 1
        state["sequences"] += cfg.batch_size
        elapsed = time.perf_counter() - tick
        state["train_seconds"] += elapsed
        window_loss += ctx.mean(float(loss.detach()))
        window_steps += 1
        window_seconds += elapsed
        bar.update(1)
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.max_steps:
            row = validate(window_loss, window_steps, window_seconds)
            window_loss, window_steps, window_seconds = 0.0, 0, 0.0
            if state["step"] >= cfg.max_steps and state["stopped"] is None:
                state["stopped"] = "max_steps"
            save_last()
            if row is not None:
                bar.set_postfix({"valid_R@50": f"{row['recall@50']:.4f}", "best": f"{state['best']:.4f}",
                                 "seq/s": f"{row['train_seq_per_s'] or 0:.0f}"})
        if callback is not None:
            callback(state["step"])
    bar.close()
    if state["stopped"] is None:
        state["stopped"] = "max_steps"
        save_last()

    if not (ctx.main or cfg.sharded_embeddings):  # rank 0 tests; with a sharded table every rank searches its rows
        return ctx.broadcast(None)
    best = rundir.load_checkpoint(ckpt_dir / "best.pt", map_location="cpu", assemble=not cfg.sharded_embeddings)
    model.load_state_dict(best["model"])
    if cfg.sharded_embeddings:
        sharded_checkpoint.load_table(model.item_emb, ckpt_dir, best["table_shards"])
    test = evaluate_model(model, data, "test", cfg.seq_len, metric_cutoffs(cfg), cfg.retrieval_backend,
                          cfg.exclude_history, cfg.eval_batch_size, device=device, new_items_only=cfg.new_items_only)
    if not ctx.main:
        return ctx.broadcast(None)
    result = {"model": cfg.model, "dataset": data.name, "seed": cfg.seed, "steps": state["step"],
              "best_step": state["best_step"], "stopped": state["stopped"], "valid_recall@50": state["best"],
              "train_seconds": state["train_seconds"],
              "train_seq_per_s": state["sequences"] / state["train_seconds"] if state["train_seconds"] else None,
              "test": test}
    rundir.append_metrics(run_dir, {"split": "test", "step": state["best_step"], **test})
    if tb is not None:
        tblog.log_row(tb, {"step": state["best_step"], **test}, "test")
        tb.close()
    rundir.atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2))
    return ctx.broadcast(result)


RESUME_KEYS = ("max_steps", "progress", "threads", "device")  # what a resume may change


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
