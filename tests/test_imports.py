"""The package's imports: no cycles (deferred imports included), layers that point one way, and
light modules that stay light.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import`` in a
module, at its top or inside a function. Importing ``a.b.c`` runs ``a/b/__init__.py`` first,
so an edge to ``a.b.c`` is an edge to the package ``a.b`` too (its re-exports count), except
for the packages that hold the importing module itself (already being imported).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "timit_lit"

# Known cycles, each to go with the change that removes it (none today: a new one fails the test).
KNOWN_CYCLES: list[set[str]] = []

# The layers, lowest first; a module may import its own layer and those below, never above.
# Modules in none of them (files, errors, decoding, checkpoints, ...) are the lowest layer.
LAYERS = [
    ("timit_lit.models",),
    ("timit_lit.callbacks",),
    ("timit_lit.summary", "timit_lit.cli", "timit_lit.sweep"),  # the command line; a sweep is its subcommand
    ("timit_lit.api", "timit_lit.__main__"),  # the command line called from Python or as python -m
]


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name ``path`` imports, relative imports resolved, wherever the import is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # ``from pkg import module``
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules that importing it runs."""
    modules = module_names()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for dotted in imported_names(name, path):
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(name: str) -> int:
    for rank, prefixes in enumerate(LAYERS, start=1):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes):
            return rank
    return 0


@pytest.mark.smoke
def test_the_graph_sees_imports_inside_functions():
    """The reader the checks below rely on: a deferred import is an edge too."""
    graph = import_graph()
    assert "timit_lit.sweep" in graph["timit_lit.cli"]  # imported inside cli._sweep only (Optuna is optional)
    assert "timit_lit.data" in graph["timit_lit.models.base"]  # it imports timit_lit.data.datasets: data/__init__ runs
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


@pytest.mark.smoke
def test_no_import_cycles_but_the_known_one():
    found = cycles(import_graph())
    assert [c for c in found if c not in KNOWN_CYCLES] == []


@pytest.mark.smoke
def test_layers_point_one_way():
    graph = import_graph()
    upward = sorted(f"{name} ({layer(name)}) imports {other} ({layer(other)})"
                    for name, edges in graph.items() for other in edges if layer(other) > layer(name))
    assert upward == []


def test_only_figure_modules_import_matplotlib():
    """Figures are drawn in the callbacks' TensorBoard extras and in the sweep's pictures, nowhere else."""
    modules = module_names()
    importers = sorted(name for name, path in modules.items()
                       if any(n == "matplotlib" or n.startswith("matplotlib.") for n in imported_names(name, path)))
    assert importers == ["timit_lit.drawing", "timit_lit.sweep.results"]


# Not timit_lit.scoring and timit_lit.edit_alignment: they use torchmetrics' word error rate, and
# importing torchmetrics imports matplotlib whenever it is installed.
LIGHT = ["timit_lit.errors", "timit_lit.phones", "timit_lit.atomic", "timit_lit.decoding", "timit_lit.phone_hmm",
         "timit_lit.data.files", "timit_lit.data.utterances", "timit_lit.data.row_links", "timit_lit.data.row_space"]
PROBE = """
import sys

def loaded(prefix):
    return sorted(m for m in sys.modules if m == prefix or m.startswith(prefix + "."))

for name in {light}:  # need neither Lightning nor its metrics, which load matplotlib
    __import__(name)
    assert not loaded("matplotlib") and not loaded("pytorch_lightning"), (name, loaded("pytorch_lightning"))
import timit_lit.checkpoints  # read by the networks: loads none of them, nor a callback
assert not loaded("timit_lit.models") and not loaded("timit_lit.callbacks"), loaded("timit_lit")
import timit_lit.models  # the networks load no callback, nor the command line
assert not loaded("timit_lit.callbacks") and not loaded("timit_lit.cli"), loaded("timit_lit")
import timit_lit.cli
assert loaded("timit_lit.callbacks") and "timit_lit.sweep" not in sys.modules  # Optuna only for the sweep
print("ok")
"""


def test_light_modules_load_no_heavier_ones():
    """What importing a module runs, in a fresh interpreter (this one has imported everything)."""
    probe = textwrap.dedent(PROBE).format(light=LIGHT)
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
