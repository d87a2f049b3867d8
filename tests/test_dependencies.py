"""pyproject.toml's runtime dependencies are honest: every third-party module the shipped
packages (middleware, sidecar, otel) import is declared, and every declared distribution is
imported (or used by name, listed below with where)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("middleware", "sidecar", "otel")
USED_BY_NAME = {
    "uvloop": "middleware/cli.py runs uvicorn with loop='uvloop'",
    # declared ahead of the state backend that imports redis.asyncio (issue 13); the config's
    # [state] backend = "redis" needs it; drop this line once middleware imports it
    "redis": "[state] backend = 'redis' (tests/redis_harness.py drives it today)",
}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normal(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0])
            for spec in project["dependencies"]}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported() -> dict[str, str]:
    """Top-level third-party module -> a file importing it."""
    found: dict[str, str] = {}
    for folder in SHIPPED:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom)
                         and node.module and not node.level else [])
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "routegate":
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_is_declared() -> None:
    declared = _declared()
    owners = packages_distributions()
    missing = {module: where for module, where in _imported().items()
               if not {_normal(d) for d in owners.get(module, [module])} & declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_declared_distribution_is_used() -> None:
    owners = packages_distributions()
    imported = {_normal(d) for module in _imported() for d in owners.get(module, [module])}
    unused = _declared() - imported - set(USED_BY_NAME)
    assert not unused, f"declared in pyproject.toml but never imported: {sorted(unused)}"
