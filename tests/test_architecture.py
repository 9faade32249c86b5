"""The layers of docs/architecture.md: every import (inside functions too) goes down or sideways, and
no modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fashionlens"

# From the doors down; a module may import its own layer and the layers below it. A name is a module
# or a package (every module inside it). Keep in step with docs/architecture.md.
LAYERS = [
    ("doors", {"fashionlens", "fashionlens.__main__", "fashionlens.cli", "fashionlens.cli_predict",
               "fashionlens.cli_paths", "fashionlens.cli_search", "fashionlens.demo", "fashionlens.server"}),
    ("services", {"fashionlens.training", "fashionlens.inference", "fashionlens.explain", "fashionlens.search",
                  "fashionlens.predictions", "fashionlens.report", "fashionlens.compare"}),
    ("names", {"fashionlens.hub"}),
    ("storage", {"fashionlens.modeldir", "fashionlens.rundir"}),
    ("science", {"fashionlens.models", "fashionlens.data", "fashionlens.metrics", "fashionlens.calibration",
                 "fashionlens.labels", "fashionlens.catalogue"}),
    ("config", {"fashionlens.config"}),
    ("leaves", {"fashionlens.errors", "fashionlens.fileio", "fashionlens.vocabulary", "fashionlens.progress",
                "fashionlens.images", "fashionlens.heatmaps", "fashionlens.losses"}),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (function bodies included).

    ``from fashionlens import images`` imports the module ``fashionlens.images``; the packages above a
    module, which Python runs first, are not counted (they are the importer's own containers)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {target for target in found if target in known and target != name}


def layer(name: str) -> int:
    matches = [(len(prefix), rank) for rank, (_, names) in enumerate(LAYERS) for prefix in names
               if name == prefix or (prefix != "fashionlens" and name.startswith(prefix + "."))]
    if not matches:
        raise AssertionError(f"{name}: in no layer; add it to LAYERS here and to docs/architecture.md")
    return max(matches)[1]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_import_goes_down_or_sideways():
    upward = [f"{source} ({LAYERS[layer(source)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
              for source, targets in graph().items() for target in sorted(targets) if layer(target) < layer(source)]
    assert upward == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle():
    assert cycles(graph()) == []


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_cycle_finder_finds_a_cycle(edges, expected):
    assert cycles(edges) == expected


def test_a_function_local_import_counts(tmp_path: Path):
    source = tmp_path / "modeldir.py"
    source.write_text("def load():\n    from fashionlens.hub import resolve_model_dir\n", encoding="utf-8")
    known = {"fashionlens.modeldir": source, "fashionlens.hub": source}
    assert imports("fashionlens.modeldir", source, known) == {"fashionlens.hub"}
