"""dmirec: Diffusion Multi-Interest (DMI) retrieval and the multi-interest baselines.

The same operations as the ``dmirec`` command, importable for notebooks::

    import dmirec
    report = dmirec.prepare("interactions.csv", "data/beauty", name="beauty")
    cfg = dmirec.make_config("comirec-sa", overrides={"max_steps": 2000})
    result = dmirec.train(cfg, "data/beauty", "runs/sa")      # test metrics of the best checkpoint
    metrics = dmirec.evaluate_run("runs/sa", split="test")
    report = dmirec.fit("interactions.csv", "fitted", budget="standard")   # the product path: dmirec fit

Imports are lazy so that ``import dmirec`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "Config": ("dmirec.config", "Config"),
    "build_config": ("dmirec.config", "build_config"),
    "prepare": ("dmirec.data.prepare", "prepare"),
    "read_log": ("dmirec.data.readers", "read_log"),
    "load_dataset": ("dmirec.data.dataset", "load_dataset"),
    "make_config": ("dmirec.training.train", "make_config"),
    "train": ("dmirec.training.train", "train"),
    "resume": ("dmirec.training.train", "resume"),
    "evaluate_run": ("dmirec.evaluation.evaluate", "evaluate_run"),
    "evaluate_model": ("dmirec.evaluation.evaluate", "evaluate_model"),
    "build_model": ("dmirec.models", "build_model"),
    "load_trained_model": ("dmirec.runs.rundir", "load_trained_model"),
    "export_bundle": ("dmirec.serving.export", "export_bundle"),
    "load_bundle": ("dmirec.serving", "load_bundle"),
    "fit": ("dmirec.pipeline.fit", "fit"),
    "fit_recipe": ("dmirec.recipes.fit", "fit_recipe"),
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dmirec' has no attribute {name!r}")


__all__ = sorted(_EXPORTS) + ["__version__"]
