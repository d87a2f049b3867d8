"""Routing: a pure function from (requested model, classification, config, availability, live
health view) to an ordered plan of pool models to try. No I/O, no clock, no randomness: the
same inputs always give the same plan, which keeps it exhaustively testable and explainable.

Traffic shifting: the static plan (cheapest capable first) is adjusted from a
:class:`RouteView` — a read-only snapshot of live health and operator overrides:

* disabled by the operator, manual weight 0, breaker open, or half-open with its single probe
  already taken: the model is dropped;
* each missed objective multiplies the model's weight (error rate over the SLO x0.25, latency
  or TTFT p95 over the SLO x0.5, quality for the category under the threshold x0.25); a
  manual weight multiplies too;
* pinned models go first, then the rest by weight (highest first), ties keeping the static
  order. A model whose numbers recover gets weight 1 again and its place back.

Every candidate carries its weight and the reasons for it (``Plan.candidates``), which is what
``POST /admin/explain`` shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from routegate.middleware.config import GatewayConfig, RouteConfig, SloConfig
from routegate.middleware.contracts import Classification
from routegate.middleware.request.errors import ModelNotFound

__all__ = ["AUTO_MODELS", "Candidate", "ModelSignal", "Override", "Plan", "RouteView",
           "plan_route"]

AUTO_MODELS = frozenset({"auto", "routegate/auto", "router"})

# Weight factors for missed objectives: a model missing one is still preferred over one
# missing two, and every degraded model stays behind every healthy one.
ERROR_RATE_FACTOR = 0.25
LATENCY_FACTOR = 0.5
QUALITY_FACTOR = 0.25


_DEFAULT_SLO = SloConfig()
_DEFAULT_ROUTE = RouteConfig()  # a category without a [routes] table routes like this


class ModelSignal(NamedTuple):
    """What live health says about one pool model (and category) at one instant. (Named
    tuples: built for every candidate of every request, and cheaper than frozen dataclasses.)"""

    breaker: Literal["closed", "open", "half_open"] = "closed"
    probe_free: bool = True  # half-open with no probe in flight: this request may probe
    requests: int = 0  # samples in the decision window
    error_rate: float | None = None
    latency_p95_s: float | None = None
    ttft_p95_s: float | None = None
    quality: float | None = None  # for the request's category
    quality_samples: int = 0
    slo: SloConfig = _DEFAULT_SLO


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's say over one model (for one category, or ``*`` for all)."""

    weight: float | None = None  # multiplies the health weight; 0 drops the model
    pin: bool = False  # first in the plan (before any weight)
    expires_at: float | None = None  # unix time; the view leaves expired overrides out


class RouteView(Protocol):
    """Read-only live inputs for one planning call (the gateway builds one per request)."""

    def disabled(self, model: str) -> bool: ...
    def signal(self, model: str, category: str | None) -> ModelSignal: ...
    def override(self, model: str, category: str | None) -> Override | None: ...


class Candidate(NamedTuple):
    model: str
    weight: float
    reasons: tuple[str, ...] = ()
    pinned: bool = False
    probe: bool = False  # this request is the breaker's half-open probe
    dropped: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    models: tuple[str, ...]
    category: str | None  # None when the client named a model
    escalated: bool = False
    reason: str = ""
    candidates: tuple[Candidate, ...] = ()  # kept (in plan order) then dropped, with reasons
    min_capability: float | None = None  # the threshold used (None: a named model)
    threshold_source: str = ""  # "routes.CATEGORY", or "default" (no route: RouteConfig's)

    @property
    def probes(self) -> tuple[str, ...]:
        return tuple(c.model for c in self.candidates if c.probe and not c.dropped)


def plan_route(requested: str, classification: Classification | None, config: GatewayConfig,
               available: frozenset[str], view: RouteView | None = None) -> Plan:
    """Order the pool models to try for one request.

    ``requested`` is the client's ``model``: a pool model (it, then its fallback chain), or
    ``auto`` (classified): the cheapest model whose capability for the category meets the
    route's threshold first, the other capable ones by cost, then the route's fallback chain
    (a category without a route uses :class:`RouteConfig`'s defaults, ``min_capability`` 0.7).
    A confidence under ``classifier.escalate_below`` raises the threshold to
    ``classifier.escalate_min_capability`` (a stronger tier), keeping the normal candidates
    behind it. Unavailable models (provider without a key) are left out; without a ``view``
    the plan never ends empty while anything is available. With a ``view``, live health and
    operator overrides adjust it (see the module docstring); a named model keeps its order
    and only loses disabled and open-breaker members.
    """
    if requested not in AUTO_MODELS:
        if requested not in config.models:
            raise ModelNotFound(f"The model `{requested}` does not exist in this gateway's pool",
                                param="model")
        chain = _available(_closure(requested, config), available)
        if view is None:
            return Plan(chain, None, reason=f"requested {requested}")
        kept, dropped = _judge(chain, None, view, weigh=False)
        return Plan(tuple(c.model for c in kept), None, reason=f"requested {requested}",
                    candidates=(*kept, *dropped))

    category = classification.category if classification else config.classifier.default_category
    configured = config.routes.get(category)
    route = configured or _DEFAULT_ROUTE
    source = f"routes.{category}" if configured else "default"
    threshold = route.min_capability
    escalated = (classification is not None
                 and classification.confidence < config.classifier.escalate_below)
    if route.candidates:
        capable: list[str] = list(route.candidates)
    else:
        capable = _capable(category, threshold, config)
    ordered: list[str] = []
    reason = f"{category}: cheapest with capability >= {threshold:g} ({source})"
    if escalated:
        strong = config.classifier.escalate_min_capability
        ordered = _capable(category, max(strong, threshold), config)
        reason = (f"{category}: confidence {classification.confidence:.2f} < "  # type: ignore[union-attr]
                  f"{config.classifier.escalate_below:g}, escalated to capability >= {strong:g}")
    ordered += capable
    ordered += [f for name in ordered for f in config.models[name].fallbacks]
    # the route's own chain (usually ending with `local`) comes last
    ordered += [f for name in route.fallbacks for f in _closure(name, config)]
    models = _available(ordered, available)
    if view is not None:
        kept, dropped = _judge(models, category, view, weigh=True)
        if kept:
            return Plan(tuple(c.model for c in kept), category, escalated, reason,
                        (*kept, *dropped), threshold, source)
        models = ()
        reason += "; every capable model is disabled, weighted 0 or has its breaker open"
    if not models:  # nothing capable is reachable: anything beats failing the request
        models = _available(sorted(config.models, key=lambda n: config.models[n].blended_price),
                            available)
        reason += "; no capable model available, using any"
        if view is not None:
            kept, dropped = _judge(models, category, view, weigh=True)
            return Plan(tuple(c.model for c in kept), category, escalated, reason,
                        (*kept, *dropped), threshold, source)
    return Plan(models, category, escalated, reason,
                tuple(Candidate(name, 1.0) for name in models), threshold, source)


def _judge(models: Iterable[str], category: str | None, view: RouteView,
           weigh: bool) -> tuple[list[Candidate], list[Candidate]]:
    """Weigh each model from live health and overrides; order the kept ones."""
    kept: list[tuple[int, int, float, Candidate]] = []
    dropped: list[Candidate] = []
    for position, name in enumerate(models):
        if view.disabled(name):
            dropped.append(Candidate(name, 0.0, ("disabled by an operator",), dropped=True))
            continue
        signal = view.signal(name, category)
        probe = False
        if signal.breaker == "open":
            dropped.append(Candidate(name, 0.0, ("circuit breaker open",), dropped=True))
            continue
        reasons: list[str] = []
        if signal.breaker == "half_open":
            if not signal.probe_free:
                dropped.append(Candidate(name, 0.0, ("circuit breaker half-open, its probe is "
                                                     "in flight",), dropped=True))
                continue
            probe = True
            reasons.append("circuit breaker half-open: this request probes it")
        weight = 1.0
        pinned = False
        if weigh:
            weight, health_reasons = _health_weight(signal, category)
            reasons += health_reasons
            override = view.override(name, category)
            if override is not None:
                if override.weight is not None:
                    if override.weight <= 0:
                        dropped.append(Candidate(name, 0.0, ("weight 0 set by an operator",),
                                                 dropped=True))
                        continue
                    weight *= override.weight
                    reasons.append(f"operator weight x{override.weight:g}")
                if override.pin:
                    pinned = True
                    reasons.append("pinned by an operator")
        if not reasons:
            reasons.append("healthy" if signal.requests else "no recent traffic: assumed healthy")
        kept.append((0 if pinned else 1, position, weight,
                     Candidate(name, round(weight, 6), tuple(reasons), pinned, probe)))
    kept.sort(key=lambda item: (item[0], -item[2], item[1]))
    return [item[3] for item in kept], dropped


def _health_weight(signal: ModelSignal, category: str | None) -> tuple[float, list[str]]:
    slo = signal.slo
    weight = 1.0
    reasons: list[str] = []
    if signal.requests >= slo.min_requests:
        if signal.error_rate is not None and signal.error_rate > slo.max_error_rate:
            weight *= ERROR_RATE_FACTOR
            reasons.append(f"error rate {signal.error_rate:.0%} > {slo.max_error_rate:.0%} "
                           f"over {signal.requests} requests: x{ERROR_RATE_FACTOR:g}")
        if (slo.latency_p95_s > 0 and signal.latency_p95_s is not None
                and signal.latency_p95_s > slo.latency_p95_s):
            weight *= LATENCY_FACTOR
            reasons.append(f"latency p95 {signal.latency_p95_s:.3g}s > {slo.latency_p95_s:g}s: "
                           f"x{LATENCY_FACTOR:g}")
        if (slo.ttft_p95_s > 0 and signal.ttft_p95_s is not None
                and signal.ttft_p95_s > slo.ttft_p95_s):
            weight *= LATENCY_FACTOR
            reasons.append(f"TTFT p95 {signal.ttft_p95_s:.3g}s > {slo.ttft_p95_s:g}s: "
                           f"x{LATENCY_FACTOR:g}")
    if (category is not None and signal.quality is not None
            and signal.quality_samples >= slo.min_quality_samples
            and signal.quality < slo.min_quality):
        weight *= QUALITY_FACTOR
        reasons.append(f"quality for {category} {signal.quality:.2f} < {slo.min_quality:g} "
                       f"over {signal.quality_samples} scores: x{QUALITY_FACTOR:g}")
    return weight, reasons


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
