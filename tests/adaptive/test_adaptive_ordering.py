"""Health-aware ordering is still a pure function: a view in, the same plan out, with reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from routegate.middleware.config import GatewayConfig, SloConfig, parse_config
from routegate.middleware.contracts import Classification
from routegate.middleware.operations.model_health import Controls, HealthRegistry, LiveView, Sample
from routegate.middleware.request.routing import ModelSignal, Override, plan_route
from tests.adaptive.adaptive_helpers import Clock

MODELS: dict[str, Any] = {
    "cheap": {"provider": "p", "input_usd_per_mtok": 0.1, "capabilities": {"chat": 0.8}},
    "mid": {"provider": "p", "input_usd_per_mtok": 1.0, "capabilities": {"chat": 0.9}},
    "big": {"provider": "q", "input_usd_per_mtok": 5.0, "capabilities": {"chat": 0.95}},
}
SLO = SloConfig(max_error_rate=0.2, latency_p95_s=2.0, min_quality=0.9, min_requests=5,
                min_quality_samples=10)


def config() -> GatewayConfig:
    return parse_config({
        "providers": {"p": {"type": "openai", "base_url": "http://x/v1"},
                      "q": {"type": "openai", "base_url": "http://y/v1"}},
        "models": MODELS, "routes": {"chat": {"min_capability": 0.7}},
        "adaptive": {"slo": {"max_error_rate": 0.2, "latency_p95_s": 2.0, "min_requests": 5,
                             "min_quality_samples": 10}}})


def chat() -> Classification:
    return Classification(category="chat", complexity="simple", confidence=0.9,
                          method="lexical", latency_ms=0.1)


@dataclass
class View:
    signals: dict[str, ModelSignal] = field(default_factory=dict)
    overrides: dict[tuple[str, str], Override] = field(default_factory=dict)
    off: set[str] = field(default_factory=set)

    def disabled(self, model: str) -> bool:
        return model in self.off

    def signal(self, model: str, category: str | None) -> ModelSignal:
        return self.signals.get(model, ModelSignal(slo=SLO))

    def override(self, model: str, category: str | None) -> Override | None:
        return self.overrides.get((model, category or "*")) or self.overrides.get((model, "*"))


ALL = frozenset(MODELS)


def plan(view: View, requested: str = "auto") -> tuple[str, ...]:
    return plan_route(requested, chat() if requested == "auto" else None, config(), ALL,
                      view).models


def test_no_signals_keeps_the_static_cost_order() -> None:
    result = plan_route("auto", chat(), config(), ALL, View())
    assert result.models == ("cheap", "mid", "big")
    assert all(c.weight == 1.0 for c in result.candidates)
    assert result.candidates[0].reasons == ("no recent traffic: assumed healthy",)


def test_error_rate_over_slo_moves_the_model_behind_healthy_ones_with_a_reason() -> None:
    view = View({"cheap": ModelSignal(requests=10, error_rate=0.5, slo=SLO)})
    result = plan_route("auto", chat(), config(), ALL, view)
    assert result.models == ("mid", "big", "cheap")
    cheap = result.candidates[-1]
    assert cheap.weight == 0.25 and "error rate 50% > 20%" in cheap.reasons[0]


def test_too_few_requests_do_not_judge() -> None:
    view = View({"cheap": ModelSignal(requests=4, error_rate=1.0, slo=SLO)})
    assert plan(view) == ("cheap", "mid", "big")


def test_latency_over_slo_is_a_smaller_penalty_than_errors() -> None:
    view = View({"cheap": ModelSignal(requests=10, error_rate=0.0, latency_p95_s=3.0, slo=SLO),
                 "mid": ModelSignal(requests=10, error_rate=0.3, slo=SLO)})
    result = plan_route("auto", chat(), config(), ALL, view)
    assert result.models == ("big", "cheap", "mid")
    assert [c.weight for c in result.candidates] == [1.0, 0.5, 0.25]


def test_quality_below_threshold_moves_the_category_to_the_next_model_and_back() -> None:
    low = View({"cheap": ModelSignal(quality=0.85, quality_samples=20, slo=SLO)})
    assert plan(low) == ("mid", "big", "cheap")
    few = View({"cheap": ModelSignal(quality=0.5, quality_samples=9, slo=SLO)})
    assert plan(few) == ("cheap", "mid", "big")
    recovered = View({"cheap": ModelSignal(quality=0.95, quality_samples=20, slo=SLO)})
    assert plan(recovered) == ("cheap", "mid", "big")


def test_breaker_open_drops_half_open_probes_once() -> None:
    view = View({"cheap": ModelSignal(breaker="open", slo=SLO)})
    result = plan_route("auto", chat(), config(), ALL, view)
    assert result.models == ("mid", "big")
    assert result.candidates[-1].dropped and "breaker open" in result.candidates[-1].reasons[0]
    probing = plan_route("auto", chat(), config(), ALL,
                         View({"cheap": ModelSignal(breaker="half_open", slo=SLO)}))
    assert probing.models == ("cheap", "mid", "big") and probing.probes == ("cheap",)
    taken = View({"cheap": ModelSignal(breaker="half_open", probe_free=False, slo=SLO)})
    assert plan(taken) == ("mid", "big")


def test_operator_weights_pins_and_disable() -> None:
    assert plan(View(overrides={("big", "chat"): Override(pin=True)})) == ("big", "cheap", "mid")
    assert plan(View(overrides={("mid", "*"): Override(weight=2.0)})) == ("mid", "cheap", "big")
    assert plan(View(overrides={("cheap", "*"): Override(weight=0.0)})) == ("mid", "big")
    assert plan(View(off={"cheap", "mid"})) == ("big",)
    # a named model keeps its chain order and only loses disabled or open members
    assert plan(View(off={"cheap"}), requested="cheap") == ()


def test_everything_dropped_falls_back_to_any_healthy_model() -> None:
    view = View({"cheap": ModelSignal(breaker="open", slo=SLO)}, off={"mid", "big"})
    result = plan_route("auto", chat(), config(), ALL, view)
    assert result.models == ()
    assert "breaker open" in result.reason or "disabled" in result.reason


def test_deterministic_for_the_same_stats() -> None:
    view = View({"cheap": ModelSignal(requests=10, error_rate=0.5, slo=SLO),
                 "mid": ModelSignal(requests=10, latency_p95_s=9.0, slo=SLO)})
    first = plan_route("auto", chat(), config(), ALL, view)
    assert all(plan_route("auto", chat(), config(), ALL, view) == first for _ in range(20))


def test_live_view_loses_and_regains_traffic_as_the_window_slides() -> None:
    cfg = config()
    clock = Clock(500.0)
    registry = HealthRegistry(cfg, clock)
    controls = Controls(wall=clock)
    for _ in range(6):
        registry.record("cheap", "p", Sample(ok=True, latency_s=5.0))  # over the 2 s SLO
    clock.now += 1  # percentiles are read from folded ticks (at most one tick behind)
    assert plan_route("auto", chat(), cfg, ALL, LiveView(registry, controls)).models[0] == "mid"
    clock.now += cfg.adaptive.decision_window_s + 1  # the slow samples slide out
    assert plan_route("auto", chat(), cfg, ALL, LiveView(registry, controls)).models[0] == "cheap"
    controls.set("mid", "chat", Override(pin=True, expires_at=clock.now + 10))
    assert plan_route("auto", chat(), cfg, ALL, LiveView(registry, controls)).models[0] == "mid"
    clock.now += 10
    assert plan_route("auto", chat(), cfg, ALL, LiveView(registry, controls)).models[0] == "cheap"
    assert controls.active() == {}


def test_per_model_slo_overrides_the_default() -> None:
    raw: dict[str, Any] = {
        "providers": {"p": {"type": "openai", "base_url": "http://x/v1"}},
        "models": {**MODELS, "cheap": {**MODELS["cheap"], "provider": "p",
                                       "slo": {"latency_p95_s": 10.0, "min_requests": 1}}},
        "routes": {"chat": {"min_capability": 0.7}},
        "adaptive": {"slo": {"latency_p95_s": 1.0, "min_requests": 1}}}
    raw["models"]["big"] = {**MODELS["big"], "provider": "p"}
    cfg = parse_config(raw)
    clock = Clock(500.0)
    registry = HealthRegistry(cfg, clock)
    for model in ("cheap", "mid"):
        registry.record(model, "p", Sample(ok=True, latency_s=3.0))
    clock.now += 1
    result = plan_route("auto", chat(), cfg, ALL, LiveView(registry, Controls(wall=clock)))
    assert result.models == ("cheap", "big", "mid")  # 3 s is within cheap's own 10 s SLO
    assert "latency p95" in result.candidates[-1].reasons[0]
