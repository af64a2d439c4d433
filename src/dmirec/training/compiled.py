"""``torch.compile`` of the training loss, as a switch (``--compile``), with a fallback to eager.

The loss of a step (the model's forward, the sampled softmax and the auxiliary terms:
:func:`dmirec.training.train.loss_with_negatives`) is the part with many small operations on
small tensors, where a compiler can fuse elementwise work and cut per-operation overhead. The
backward is compiled with it (AOTAutograd); the optimiser step stays eager (Adam is already one
fused kernel). Compiled numbers equal eager ones up to float summation order (the parity test:
tests/training/test_compile.py); eager stays the default, and the measured speed of both is in
docs/performance.md.

When the compiler cannot run (no C++ toolchain for CPU inductor, an unsupported operation), the
first call warns once and the run goes on in eager mode: same code path, same numbers as a run
without the switch.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

_WRAPPED: dict[Callable, Callable] = {}


def maybe_compiled(fn: Callable, enabled: bool) -> Callable:
    """``fn`` itself, or (``enabled``) one shared compiled version of it that falls back to ``fn``."""
    if not enabled:
        return fn
    if fn not in _WRAPPED:
        _WRAPPED[fn] = compiled_or_eager(fn)
    return _WRAPPED[fn]


def compiled_or_eager(fn: Callable, compile_fn: Callable = torch.compile) -> Callable:
    """A callable that runs ``compile_fn(fn)``; if compiling or a compiled call fails, it warns
    once and calls ``fn`` from then on (an error of ``fn`` itself is raised again by that call)."""
    state: dict[str, Callable | None] = {"run": None}

    def fall_back(err: Exception) -> Callable:
        warnings.warn(f"torch.compile is unavailable here ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                      "training goes on in eager mode", RuntimeWarning, stacklevel=3)
        state["run"] = fn
        return fn

    def call(*args, **kwargs):
        run = state["run"]
        if run is None:
            try:
                run = state["run"] = compile_fn(fn)
            except Exception as err:  # noqa: BLE001 (any failure to build the compiler: fall back)
                run = fall_back(err)
        if run is fn:
            return fn(*args, **kwargs)
        try:
            return run(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 (a compiler failure at first call; a real error re-raises in eager)
            return fall_back(err)(*args, **kwargs)

    return call
