"""dmirec: Diffusion Multi-Interest (DMI) retrieval and the multi-interest baselines.

The same operations as the ``dmirec`` command, importable for notebooks::

    import dmirec
    report = dmirec.prepare("interactions.csv", "data/beauty", name="beauty")
    cfg = dmirec.make_config("comirec-sa", overrides={"max_steps": 2000})
    result = dmirec.train(cfg, "data/beauty", "runs/sa")      # test metrics of the best checkpoint
    metrics = dmirec.evaluate_run("runs/sa", split="test")

Imports are lazy so that ``import dmirec`` stays cheap.
"""

from __future__ import annotations

import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "Config": ("dmirec.config", "Config"),
    "build_config": ("dmirec.config", "build_config"),
    "prepare": ("dmirec.data.prepare", "prepare"),
    "read_log": ("dmirec.data.readers", "read_log"),
    "load_dataset": ("dmirec.data.dataset", "load_dataset"),
    "make_config": ("dmirec.train", "make_config"),
    "train": ("dmirec.train", "train"),
    "resume": ("dmirec.train", "resume"),
    "evaluate_run": ("dmirec.evaluate", "evaluate_run"),
    "evaluate_model": ("dmirec.evaluate", "evaluate_model"),
    "build_model": ("dmirec.models", "build_model"),
    "load_trained_model": ("dmirec.rundir", "load_trained_model"),
    "export_bundle": ("dmirec.export", "export_bundle"),
    "load_bundle": ("dmirec.serve", "load_bundle"),
}


class _Package(types.ModuleType):
    """``dmirec.train`` is the function :func:`dmirec.train.train`, also once the submodule
    ``dmirec.train`` has been imported (an import binds a submodule as an attribute of its
    package, which would otherwise replace the function by the module). ``from dmirec.train
    import make_config`` still imports from the module."""

    @property
    def train(self):
        from .train import train

        return train

    @train.setter
    def train(self, module) -> None:  # the import system binding the submodule: keep the function
        self.__dict__["_train_module"] = module


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dmirec' has no attribute {name!r}")


__all__ = sorted(_EXPORTS) + ["__version__"]
