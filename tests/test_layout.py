"""The package layout (docs/layout.md): imports between dmirec's packages point one way.

Every module under src/dmirec is parsed with ``ast``; every import of a dmirec module, at the top
of a module or inside a function, is an edge of the import graph. The tests check that

* each edge between two packages points down :data:`ORDER` (so the package graph has no cycle),
  and the module graph has no cycle either;
* nothing outside ``dmirec.models.dmi`` imports the diffusion;
* a function-local import of a dmirec module is one of :data:`ALLOWED_LOCAL` (it guards an
  optional dependency), and a function-local import of a third-party module is one of
  :data:`ALLOWED_LOCAL_THIRD_PARTY` (optional or heavy dependencies). Standard-library imports
  are not checked.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "dmirec"

#: dmirec's packages, lowest first: a module may import from its own package and from packages
#: earlier in the list, never from a later one. "dmirec" is the package root (``__init__``'s lazy
#: exports and ``__main__``), above everything.
ORDER = [
    "util",         # leaf helpers, no dmirec imports
    "config",       # the config dataclass, defaults, loading
    "data",         # prepare, datasets, samplers, log readers
    "retrieval",    # exact and faiss search, the distributed search
    "collab",       # the interest bank and the neighbour rule
    "repeats",      # the repeat stage and channel, repeat.json parameters
    "channels",     # classical item-to-item channels (the item-item models are built on them)
    "models",       # the model contract, the registry, the models (DMI and its diffusion in models/dmi)
    "objectives",   # the sampled-softmax losses
    "runs",         # run directories and checkpoints (evaluation loads runs, training writes them)
    "evaluation",   # metrics, evaluation, the repeat channel's fit, diagnostics, report, compare
    "training",     # the loop, optimisers, TensorBoard, distributed training
    "recipes",      # recipes of channels, fitted on validation users (they evaluate runs)
    "serving",      # bundle, export, index, HTTP app, batch
    "pipeline",     # dmirec fit: prepare, train, fit the rule and channels, evaluate, export
    "cli",          # the command line and the demo
    "dmirec",       # the package root
]

DIFFUSION = "dmirec.models.dmi.diffusion"
DIFFUSION_OWNER = "dmirec.models.dmi"

#: (importing module, imported module): why it is imported inside a function.
ALLOWED_LOCAL = {
    ("dmirec.cli.main", "dmirec.serving.app"): "FastAPI, the optional `serve` extra",
    ("dmirec.serving", "dmirec.serving.app"): "FastAPI, the optional `serve` extra",
}

#: third-party modules (top-level name) that may be imported inside a function, and why.
ALLOWED_LOCAL_THIRD_PARTY = {
    "torchrec": "the optional `dist` extra (sharded item table)",
    "fastapi": "the optional `serve` extra",
    "uvicorn": "the optional `serve` extra",
    "matplotlib": "the optional `report` extra",
    "torch.utils.tensorboard": "the optional `tensorboard` extra",
    "faiss": "heavy native library, loaded where an index is built or configured",
    "pyarrow": "heavy native library, loaded where Parquet/Arrow is read or written",
}


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported dmirec module
    local: bool  # inside a function
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(source: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".") if _is_package(source) else source.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(tree: ast.AST):
    """(node, inside a function) for every import statement of a module."""
    def walk(node, local):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, inner
            yield from walk(child, inner)
    yield from walk(tree, False)


def _targets(source: str, node) -> list[str]:
    """The modules an import statement loads (a name imported from a package may be a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = _resolve(source, node)
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in MODULES else base)
    return out


def collect():
    edges, third_party_local = [], []
    for source, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, local in _imports(tree):
            for target in _targets(source, node):
                if target == "dmirec" or target.startswith("dmirec."):
                    edges.append(Edge(source, target, local, node.lineno))
                elif local and target.split(".")[0] not in sys.stdlib_module_names:
                    third_party_local.append((source, target, node.lineno))
    return edges, third_party_local


EDGES, THIRD_PARTY_LOCAL = collect()


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] not in ("__main__",) else "dmirec"


def test_every_package_is_in_the_order():
    packages = {package_of(m) for m in MODULES}
    assert packages - set(ORDER) == set(), "a new package must be placed in ORDER (tests/test_layout.py) " \
                                           "and in docs/layout.md"


def test_imports_between_packages_point_down_the_order():
    wrong = [f"{e.source} (line {e.line}) imports {e.target}: {package_of(e.source)} is below "
             f"{package_of(e.target)}" for e in EDGES
             if ORDER.index(package_of(e.target)) > ORDER.index(package_of(e.source))]
    assert wrong == []


def test_the_module_graph_has_no_cycle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in EDGES:
        if e.target in MODULES and e.target != e.source:
            graph[e.source].add(e.target)
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(m, stack):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [m, t]))
            if t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_only_dmi_imports_the_diffusion():
    outside = [f"{e.source} (line {e.line}) imports {e.target}" for e in EDGES
               if (e.target == DIFFUSION or e.target.startswith(DIFFUSION + "."))
               and not (e.source == DIFFUSION_OWNER or e.source.startswith(DIFFUSION_OWNER + "."))]
    assert outside == []


def test_function_local_imports_of_dmirec_are_the_listed_ones():
    local = {(e.source, e.target) for e in EDGES if e.local}
    assert local == set(ALLOWED_LOCAL), "a function-local import must not hide an import cycle: import at the " \
                                        "top of the module (or list an optional dependency in ALLOWED_LOCAL)"


def test_function_local_imports_of_third_party_modules_are_optional_or_heavy():
    def allowed(target):
        return any(target == a or target.startswith(a + ".") for a in ALLOWED_LOCAL_THIRD_PARTY)
    assert [f"{s} (line {n}) imports {t}" for s, t, n in THIRD_PARTY_LOCAL if not allowed(t)] == []


@pytest.mark.parametrize("old", ["dmirec.train", "dmirec.evaluate", "dmirec.rundir", "dmirec.sharded",
                                 "dmirec.serve", "dmirec.diffusion", "dmirec.neighbours"])
def test_old_flat_module_paths_are_gone(old):
    """No compatibility shims: the old flat modules do not exist (the lead fixes imports to the new paths)."""
    assert old not in MODULES


def test_the_checker_sees_a_back_arrow_and_a_hidden_cycle(tmp_path):
    """The graph builder resolves relative imports inside functions (what the layout tests rely on)."""
    tree = ast.parse("def f():\n    from ...training.train import train\n")
    node, local = next(_imports(tree))
    assert local and _targets("dmirec.models.dmi.model", node) == ["dmirec.training.train"]
    assert ORDER.index(package_of("dmirec.training.train")) > ORDER.index(package_of("dmirec.models.dmi.model"))


def test_the_package_exports_resolve():
    """``dmirec``'s lazy exports (``dmirec.train``, ``dmirec.evaluate_run``, ...) name modules that exist."""
    import dmirec

    for name, (module, attr) in dmirec._EXPORTS.items():
        assert module in MODULES, name
        assert callable(getattr(dmirec, name)) or isinstance(getattr(dmirec, name), type), name
