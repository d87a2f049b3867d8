"""The rooms import one way only, and no file imports itself back through others.

Every ``import`` in every module counts, also those behind ``TYPE_CHECKING`` and inside
functions. Importing ``routegate.middleware.x.y`` also runs the packages ``routegate.middleware``
and ``routegate.middleware.x``, so an import edge leads to those ``__init__`` modules as well.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = {"middleware": "routegate.middleware", "sidecar": "routegate.sidecar", "otel": "routegate.otel"}
CONTRACTS = "routegate.middleware.contracts"
# The wiring: the gateway starts the sidecar's and telemetry's extensions, never the reverse.
ALLOWED_ROOM_ARROWS = {("middleware", "sidecar"), ("middleware", "otel")}


def project_modules() -> dict[str, Path]:
    modules = {}
    for folder, package in ROOMS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


MODULES = project_modules()


def imported_names(module: str, source: str, is_package: bool = False) -> Iterator[str]:
    """Every dotted name ``module`` imports (``from a import b`` yields ``a`` and ``a.b``)."""
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def project_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(module: str, source: str | None = None) -> set[str]:
    path = MODULES[module]
    edges = set()
    for name in imported_names(module, path.read_text() if source is None else source,
                               path.name == "__init__.py"):
        target = project_module(name) if name.startswith("routegate.") else None
        if target is None or target == module:
            continue
        edges.add(target)
        parts = target.split(".")
        for end in range(2, len(parts)):  # the packages that run first
            package = ".".join(parts[:end])
            if package in MODULES and not module.startswith(package + "."):
                edges.add(package)
    return edges


GRAPH = {module: import_edges(module) for module in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def room(module: str) -> str:
    return module.split(".")[1]


def test_the_graph_sees_every_kind_of_import() -> None:
    """The parser must see what the rules forbid, or the tests below pass for nothing."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from routegate.otel.setup import Telemetry\n"
        "def f():\n    import routegate.sidecar.client\n"
        "from . import heuristic\n"
    )
    edges = import_edges("routegate.sidecar.client", source)
    assert {"routegate.otel.setup", "routegate.otel", "routegate.sidecar.client",
            "routegate.sidecar.heuristic"} - {"routegate.sidecar.client"} <= edges
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_file_level_cycles() -> None:
    assert cycles(GRAPH) == []


def test_contracts_import_nothing_of_the_project() -> None:
    assert GRAPH[CONTRACTS] == set()
    source = MODULES[CONTRACTS].read_text()
    names = [n for n in imported_names(CONTRACTS, source) if n.startswith("routegate")]
    assert names == []


@pytest.mark.parametrize("other", ["sidecar", "otel"])
def test_sidecar_and_otel_use_only_the_contracts_of_middleware(other: str) -> None:
    reached = {(module, target) for module, targets in GRAPH.items() if room(module) == other
               for target in targets if room(target) == "middleware"}
    # importing the contracts runs the (lazy) package __init__ too, which imports nothing
    assert {target for _, target in reached} <= {CONTRACTS, "routegate.middleware"}, reached
    assert GRAPH["routegate.middleware"] == set()


def test_rooms_point_one_way() -> None:
    arrows = {(room(module), room(target)) for module, targets in GRAPH.items()
              for target in targets
              if room(module) != room(target) and target not in {CONTRACTS, "routegate.middleware"}}
    assert arrows <= ALLOWED_ROOM_ARROWS
    assert ("sidecar", "otel") not in arrows and ("otel", "sidecar") not in arrows
