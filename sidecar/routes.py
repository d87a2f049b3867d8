"""Route specs for the classifier: the shipped defaults and the ones a config defines."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from routegate.sidecar.protocol import RouteSpec

__all__ = ["DEFAULT_ROUTES_FILE", "RouteLike", "default_routes", "load_routes", "route_specs"]

DEFAULT_ROUTES_FILE = Path(__file__).with_name("routes.toml")


class RouteLike(Protocol):
    """What a config route offers (``routegate.middleware.config.RouteConfig`` fits)."""

    @property
    def description(self) -> str: ...

    @property
    def examples(self) -> tuple[str, ...]: ...


def load_routes(path: str | Path) -> tuple[RouteSpec, ...]:
    """Routes from a TOML file with ``[routes.NAME]`` tables (gateway.toml or routes.toml)."""
    raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    routes = raw.get("routes", {})
    return tuple(
        RouteSpec(
            name=name,
            description=str(table.get("description", "")),
            examples=tuple(str(e) for e in table.get("examples", ())),
        )
        for name, table in routes.items()
    )


def default_routes() -> tuple[RouteSpec, ...]:
    return load_routes(DEFAULT_ROUTES_FILE)


def route_specs(
    routes: Mapping[str, RouteLike] | Iterable[RouteSpec] | None = None,
    categories: Iterable[str] | None = None,
) -> tuple[RouteSpec, ...]:
    """The routes to teach the sidecar.

    ``routes`` maps route names to config entries (or is a sequence of specs). A route with no
    examples of its own takes the shipped examples (and description) of the same name. With
    no routes, ``categories`` (or else all shipped defaults) name which defaults to use.
    """
    defaults = {spec.name: spec for spec in default_routes()}
    if routes is None or (isinstance(routes, Mapping) and not routes):
        names = list(categories) if categories is not None else list(defaults)
        return tuple(defaults.get(name, RouteSpec(name=name)) for name in names)
    if isinstance(routes, Mapping):
        specs = [
            RouteSpec(name=name, description=route.description, examples=tuple(route.examples))
            for name, route in routes.items()
        ]
    else:
        specs = list(routes)
    out: list[RouteSpec] = []
    for spec in specs:
        fallback = defaults.get(spec.name)
        if fallback is not None and not spec.examples:
            spec = RouteSpec(
                name=spec.name,
                description=spec.description or fallback.description,
                examples=fallback.examples,
            )
        out.append(spec)
    return tuple(out)
