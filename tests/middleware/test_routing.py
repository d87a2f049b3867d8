"""Routing v0 is a pure function: exhaustive checks without any server."""

from __future__ import annotations

from typing import Any

import pytest

from routegate.middleware.config import GatewayConfig, parse_config
from routegate.middleware.contracts import Classification
from routegate.middleware.request.errors import ModelNotFound
from routegate.middleware.request.routing import plan_route

MODELS: dict[str, dict[str, Any]] = {
    "tiny": {"provider": "p", "input_usd_per_mtok": 0.0, "context_window": 2048,
             "capabilities": {"chat": 0.4, "code": 0.1}},
    "cheap": {"provider": "p", "input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.1,
              "capabilities": {"chat": 0.8, "code": 0.6}, "fallbacks": ["mid"]},
    "mid": {"provider": "p", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0,
            "capabilities": {"chat": 0.9, "code": 0.86}},
    "strong": {"provider": "q", "input_usd_per_mtok": 5.0, "output_usd_per_mtok": 5.0,
               "capabilities": {"chat": 0.95, "code": 0.95}, "fallbacks": ["mid"]},
}


def config(**routes: dict[str, Any]) -> GatewayConfig:
    return parse_config({
        "providers": {"p": {"type": "openai", "base_url": "http://x/v1"},
                      "q": {"type": "openai", "base_url": "http://y/v1"}},
        "models": MODELS,
        "routes": routes or {"chat": {"min_capability": 0.7, "fallbacks": ["tiny"]},
                             "code": {"min_capability": 0.85, "fallbacks": ["tiny"]}},
        "classifier": {"escalate_below": 0.5, "escalate_min_capability": 0.93},
    })


def classified(category: str, confidence: float = 0.9) -> Classification:
    return Classification(category=category, complexity="simple", confidence=confidence,
                          method="lexical", latency_ms=0.1)


ALL = frozenset(MODELS)


def test_cheapest_capable_first_then_by_cost_then_fallback_chain() -> None:
    plan = plan_route("auto", classified("chat"), config(), ALL)
    assert plan.models == ("cheap", "mid", "strong", "tiny")
    assert plan.category == "chat" and not plan.escalated


def test_threshold_excludes_weak_models() -> None:
    plan = plan_route("auto", classified("code"), config(), ALL)
    assert plan.models == ("mid", "strong", "tiny")


def test_low_confidence_escalates_to_the_strong_tier_first() -> None:
    plan = plan_route("auto", classified("chat", confidence=0.3), config(), ALL)
    assert plan.escalated
    assert plan.models[0] == "strong"
    assert plan.models[1:] == ("cheap", "mid", "tiny")
    assert "escalated" in plan.reason


def test_explicit_model_skips_classification_and_follows_its_chain() -> None:
    plan = plan_route("cheap", None, config(), ALL)
    assert plan.models == ("cheap", "mid") and plan.category is None


def test_unknown_model_is_404() -> None:
    with pytest.raises(ModelNotFound) as info:
        plan_route("gpt-17", None, config(), ALL)
    assert info.value.status == 404 and info.value.param == "model"


def test_unavailable_models_are_left_out() -> None:
    plan = plan_route("auto", classified("chat"), config(), frozenset({"strong", "tiny"}))
    assert plan.models == ("strong", "tiny")


def test_nothing_capable_available_still_plans_anything_available() -> None:
    routes = {"chat": {"min_capability": 0.99}, "code": {"min_capability": 0.99}}
    plan = plan_route("auto", classified("code"), config(**routes), frozenset({"tiny"}))
    assert plan.models == ("tiny",)


def test_explicit_candidates_override_cost_order() -> None:
    routes = {"chat": {"candidates": ["strong", "cheap"]}, "code": {}}
    plan = plan_route("auto", classified("chat"), config(**routes), ALL)
    assert plan.models[:2] == ("strong", "cheap")


def test_no_classification_uses_the_default_category() -> None:
    plan = plan_route("auto", None, config(), ALL)
    assert plan.category == "chat"


def test_plan_is_deterministic() -> None:
    plans = {plan_route("auto", classified("code"), config(), ALL) for _ in range(5)}
    assert len(plans) == 1


def test_a_category_without_a_route_uses_the_route_defaults() -> None:
    """No [routes] at all: capabilities still count (RouteConfig's min_capability, 0.7)."""
    bare = parse_config({"providers": {"p": {"type": "openai", "base_url": "http://x/v1"},
                                       "q": {"type": "openai", "base_url": "http://y/v1"}},
                         "models": MODELS})
    plan = plan_route("auto", classified("code"), bare, ALL)
    assert plan.models[:2] == ("mid", "strong")  # tiny (0.1) and cheap (0.6) are not capable
    assert plan.min_capability == 0.7 and plan.threshold_source == "default"
    assert "(default)" in plan.reason
    routed = plan_route("auto", classified("code"), config(), ALL)
    assert routed.min_capability == 0.85 and routed.threshold_source == "routes.code"
