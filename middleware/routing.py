"""Routing: a pure function from (requested model, classification, config, availability) to an
ordered plan of pool models to try. No I/O, no clock, no randomness: the same inputs always
give the same plan, which keeps it exhaustively testable and explainable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from routegate.middleware.config import GatewayConfig
from routegate.middleware.errors import ModelNotFound
from routegate.sidecar.protocol import Classification

__all__ = ["AUTO_MODELS", "Plan", "plan_route"]

AUTO_MODELS = frozenset({"auto", "routegate/auto", "router"})


@dataclass(frozen=True, slots=True)
class Plan:
    models: tuple[str, ...]
    category: str | None  # None when the client named a model
    escalated: bool = False
    reason: str = ""


def plan_route(requested: str, classification: Classification | None, config: GatewayConfig,
               available: frozenset[str]) -> Plan:
    """Order the pool models to try for one request.

    ``requested`` is the client's ``model``: a pool model (it, then its fallback chain), or
    ``auto`` (classified): the cheapest model whose capability for the category meets the
    route's threshold first, the other capable ones by cost, then the route's fallback chain.
    A confidence under ``classifier.escalate_below`` raises the threshold to
    ``classifier.escalate_min_capability`` (a stronger tier), keeping the normal candidates
    behind it. Unavailable models (provider without a key) are left out; the plan never ends
    empty while anything is available.
    """
    if requested not in AUTO_MODELS:
        if requested not in config.models:
            raise ModelNotFound(f"The model `{requested}` does not exist in this gateway's pool",
                                param="model")
        chain = _closure(requested, config)
        return Plan(_available(chain, available), None, reason=f"requested {requested}")

    category = classification.category if classification else config.classifier.default_category
    route = config.routes.get(category)
    threshold = route.min_capability if route else 0.0
    escalated = (classification is not None
                 and classification.confidence < config.classifier.escalate_below)
    if route and route.candidates:
        capable: list[str] = list(route.candidates)
    else:
        capable = _capable(category, threshold, config)
    ordered: list[str] = []
    reason = f"{category}: cheapest with capability >= {threshold:g}"
    if escalated:
        strong = config.classifier.escalate_min_capability
        ordered = _capable(category, max(strong, threshold), config)
        reason = (f"{category}: confidence {classification.confidence:.2f} < "  # type: ignore[union-attr]
                  f"{config.classifier.escalate_below:g}, escalated to capability >= {strong:g}")
    ordered += capable
    ordered += [f for name in ordered for f in config.models[name].fallbacks]
    if route:  # the route's own chain (usually ending with `local`) comes last
        ordered += [f for name in route.fallbacks for f in _closure(name, config)]
    models = _available(ordered, available)
    if not models:  # nothing capable is reachable: anything beats failing the request
        models = _available(sorted(config.models, key=lambda n: config.models[n].blended_price),
                            available)
        reason += "; no capable model available, using any"
    return Plan(models, category, escalated, reason)


def _capable(category: str, threshold: float, config: GatewayConfig) -> list[str]:
    eligible = [(model.blended_price, name) for name, model in config.models.items()
                if model.capabilities.get(category, 0.0) >= threshold]
    return [name for _, name in sorted(eligible)]


def _closure(first: str, config: GatewayConfig) -> list[str]:
    """A model, then its fallbacks, breadth first (fallback chains may nest)."""
    chain = [first]
    for name in chain:
        chain += [f for f in config.models[name].fallbacks if f not in chain]
    return chain


def _available(names: Iterable[str], available: frozenset[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for name in names if name in available))
