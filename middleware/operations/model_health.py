"""Live health: windows per pool model and provider (:mod:`routegate.middleware.operations.sliding_windows`),
a circuit breaker per model (:mod:`routegate.middleware.operations.breaker`), and the signals routing
reads from them.

Time comes from an injected clock (``time.monotonic`` by default) so tests drive the windows
and breakers without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import httpx

from routegate.middleware.config import GatewayConfig, SloConfig
from routegate.middleware.contracts import AttemptInfo, RequestContext, RequestOutcome
from routegate.middleware.operations.breaker import Breaker, BreakerChange, BreakerState
from routegate.middleware.operations.controls import Controls
from routegate.middleware.operations.sliding_windows import (
    WINDOWS,
    Aggregate,
    Decision,
    Sample,
    Window,
    WindowStats,
    sample_bins,
)
from routegate.middleware.request.routing import ModelSignal, Override

__all__ = [
    "WINDOWS",
    "Breaker",
    "BreakerChange",
    "BreakerState",
    "Controls",
    "Decision",
    "HealthObserver",
    "HealthRegistry",
    "LiveView",
    "Sample",
    "Tracker",
    "Window",
    "WindowStats",
]

Clock = Callable[[], float]
# Told of every breaker transition made here (model, change): the fleet hears of it.
BreakerListener = Callable[[str, BreakerChange], None]

class Tracker:
    """The stats windows (1 min, 5 min, 1 h) and the decision window of one model or
    provider, plus per-category quality windows (1 h: feedback is sparse).

    A sample goes into one accumulator for the current tick (1 s, or a decision bucket if
    shorter): one small add per request. When the tick changes (or someone reads) the
    accumulator is folded into every window at once, so the per-request cost does not grow
    with the number of windows. Routing reads folded ticks only (at most one tick behind,
    cached in between); breakers count the open tick too, so they react at once.

    With several replicas, ``remote`` and ``remote_quality`` hold the other replicas' decision
    windows and quality sums (:mod:`routegate.middleware.state.health_sync`), added to this
    one's when the routing signal is computed; breakers count this replica's verdicts only.
    """

    __slots__ = ("_cache", "_cache_key", "_folds", "_pending", "_pending_at", "_pending_has",
                 "_pending_tick", "_quality_version", "_signals", "_tick_s", "_version",
                 "decision", "quality", "remote", "remote_quality", "requests_total", "windows")

    def __init__(self, decision_window_s: float) -> None:
        self.windows = {name: Window(span, n) for name, (span, n) in WINDOWS.items()}
        self.decision = Window(decision_window_s, 12)
        self.quality: dict[str, Window] = {}
        self.requests_total = 0
        self._tick_s = min(1.0, decision_window_s / 12)
        self._pending = Aggregate()
        self._pending_has = False
        self._pending_tick = -1
        self._pending_at = 0.0
        self._folds = 0
        self._version = 0
        self._cache_key = (-1, -1)
        self._cache = Decision(0, None, None, None)
        self._quality_version = 0
        self._signals: dict[str | None, tuple[tuple[int, int, int, int], ModelSignal]] = {}
        self.remote: Aggregate | None = None
        self.remote_quality: dict[str, tuple[float, int]] = {}  # category -> (sum, samples)

    def _fold(self) -> None:
        if self._pending_has:
            pending, at = self._pending, self._pending_at
            for window in self.windows.values():
                window.merge(at, pending)
            self.decision.merge(at, pending)
            self._pending, self._pending_has = Aggregate(), False
            self._folds += 1

    def _tick(self, now: float) -> None:
        tick = int(now // self._tick_s)
        if tick != self._pending_tick:
            self._fold()
            self._pending_tick, self._pending_at = tick, now

    def add(self, now: float, sample: Sample, bins: tuple[int, int] | None = None) -> None:
        self._tick(now)
        self._pending.add(sample, bins or sample_bins(sample))
        self._pending_has = True
        self._version += 1
        if sample.ok is not None:
            self.requests_total += 1

    def stats(self, window: str, now: float) -> WindowStats:
        """One stats window (``1m``, ``5m``, ``1h``) read now."""
        self._fold()
        return self.windows[window].stats(now)

    def counts(self, now: float) -> tuple[int, int]:
        """(successes, failures) in the decision window, the open tick included."""
        self._tick(now)
        ok, fail = self.decision.counts(now)
        return ok + self._pending.ok, fail + self._pending.fail

    def decision_stats(self, now: float) -> Decision:
        """The numbers routing reads: the decision window as of the last folded tick (at most
        one tick behind), recomputed only when a tick is folded or a bucket slides."""
        self._tick(now)
        key = (self.decision.epoch(now), self._folds)
        if key != self._cache_key:
            self._cache, self._cache_key = self.decision.decision(now, self.remote), key
        return self._cache

    def local(self, now: float) -> tuple[Aggregate, dict[str, Aggregate]]:
        """This replica's decision window (folded ticks) and quality windows, for the fleet
        (live totals: read them, do not change them)."""
        self._tick(now)
        return self.decision.total(now), {c: w.total(now) for c, w in self.quality.items()}

    def set_remote(self, decision: Aggregate | None,
                   quality: dict[str, tuple[float, int]]) -> None:
        """The other replicas' decision windows and quality sums (replacing the last ones).
        Bumping the fold and quality counters invalidates the cached signals, so nothing is
        added to the per-request path."""
        self.remote, self.remote_quality = decision, quality
        self._folds += 1
        self._quality_version += 1

    def signal(self, now: float, category: str | None, slo: SloConfig,
               config_version: int) -> ModelSignal:
        """The health part of a routing signal (breaker closed), cached until a tick is folded,
        a bucket slides, a quality score arrives or the config changes."""
        self._tick(now)
        key = (self.decision.epoch(now), self._folds, self._quality_version, config_version)
        cached = self._signals.get(category)
        if cached is not None and cached[0] == key:
            return cached[1]
        stats = self.decision_stats(now)
        quality_sum, quality_n = 0.0, 0
        window = self.quality.get(category) if category is not None else None
        if window is not None:
            q = window.total(now)
            quality_sum, quality_n = q.q_sum, q.q_n
        if category is not None and category in self.remote_quality:
            remote_sum, remote_n = self.remote_quality[category]
            quality_sum, quality_n = quality_sum + remote_sum, quality_n + remote_n
        quality = quality_sum / quality_n if quality_n else None
        signal = ModelSignal("closed", True, stats.requests, stats.error_rate,
                             stats.latency_p95_s, stats.ttft_p95_s, quality, quality_n, slo)
        self._signals[category] = (key, signal)
        return signal

    def add_quality(self, now: float, category: str | None, score: float) -> None:
        self._quality_version += 1
        sample = Sample(quality=score)
        self.add(now, sample)
        if category is not None:
            window = self.quality.get(category)
            if window is None:
                window = self.quality[category] = Window(*WINDOWS["1h"])
            window.add(now, sample)

    def retract_quality(self, at: float, category: str | None, score: float) -> None:
        """Undo ``add_quality(at, ...)`` (a replaced vote); the stats windows got it merged at
        its tick's start, the same bucket (the decision window never reads quality)."""
        self._fold()
        self._quality_version += 1
        sample = Sample(quality=score)
        for window in (*self.windows.values(), self.quality.get(category or "")):
            if window is not None:
                window.retract(at, sample)


class HealthRegistry:
    """Trackers and breakers for every pool model and provider, fed by attempt outcomes.

    ``on_breaker`` and ``fleet`` are set when replicas share state: transitions are passed
    on, and a half-open probe waits for the fleet's lease (``Breaker.lease_until``)."""

    def __init__(self, config: GatewayConfig, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.on_breaker: BreakerListener | None = None
        self.fleet = False
        self.fleet_until = math.inf  # the last flush reached the fleet + the lease time
        self.models: dict[str, Tracker] = {}
        self.providers: dict[str, Tracker] = {}
        self.breakers: dict[str, Breaker] = {}
        self.config = config
        self.config_version = 0
        self.configure(config)

    def configure(self, config: GatewayConfig) -> None:
        """Adopt a (re)loaded config: new models get trackers, breakers take new settings,
        history of models that stay is kept."""
        self.config = config
        self.config_version += 1
        span = config.adaptive.decision_window_s
        for name, model in config.models.items():
            tracker = self.models.get(name)
            if tracker is None or tracker.decision.span_s != span:
                fresh = Tracker(span)
                if tracker is not None:
                    fresh.windows, fresh.quality = tracker.windows, tracker.quality
                    fresh.requests_total = tracker.requests_total
                self.models[name] = fresh
            breaker_config = model.breaker or config.adaptive.breaker
            breaker = self.breakers.get(name)
            if breaker is None:
                self.breakers[name] = Breaker(breaker_config, leased=not self.fleet)
            else:
                breaker.config = breaker_config
            if model.provider not in self.providers:
                self.providers[model.provider] = Tracker(span)

    def slo(self, model: str) -> SloConfig:
        entry = self.config.models.get(model)
        return (entry.slo if entry is not None and entry.slo is not None
                else self.config.adaptive.slo)

    def record(self, model: str, provider: str, sample: Sample, owner: str | None = None,
               verdict: bool = True) -> None:
        """One attempt's sample into the model's and provider's windows; with ``verdict`` its
        success or failure also goes to the model's breaker."""
        now = self.clock()
        tracker = self.models.get(model)
        if tracker is None:
            return
        bins = sample_bins(sample)
        tracker.add(now, sample, bins)
        provider_tracker = self.providers.get(provider)
        if provider_tracker is not None:
            provider_tracker.add(now, sample, bins)
        if sample.ok is not None and verdict:
            change = self.breakers[model].record(now, sample.ok, tracker, owner)
            if change is not None and self.on_breaker is not None:
                self.on_breaker(model, change)

    def reset_breaker(self, model: str) -> bool:
        """An operator's reset (False: no such model); every replica's breaker follows."""
        breaker = self.breakers.get(model)
        if breaker is None:
            return False
        breaker.reset()
        if self.on_breaker is not None:
            self.on_breaker(model, "reset")
        return True

    def record_quality(self, model: str, category: str | None, score: float,
                       now: float | None = None) -> bool:
        tracker = self.models.get(model)
        if tracker is None:
            return False
        tracker.add_quality(self.clock() if now is None else now, category, score)
        return True

    def model_names(self) -> Iterable[str]:
        return self.models.keys()

    def claim_probes(self, owner: str, models: Iterable[str]) -> None:
        for name in models:
            breaker = self.breakers.get(name)
            if breaker is not None and breaker.probe_owner is None and self.may_probe(
                    breaker, self.clock()):
                breaker.claim_probe(owner)

    def may_probe(self, breaker: Breaker, now: float) -> bool:
        """This replica may offer ``breaker``'s half-open probe: it holds the fleet's lease
        (always, alone), or the fleet has been out of reach since ``fleet_until``: then each
        replica probes on its own, as a lone gateway does."""
        return breaker.lease_until > now or now > self.fleet_until

    def release_probes(self, owner: str) -> None:
        for breaker in self.breakers.values():
            if breaker.probe_owner == owner:
                breaker.release_probe(owner)


class LiveView:
    """The :class:`~routegate.middleware.request.routing.RouteView` of one request: health and
    overrides read at one instant (``now`` from the registry's clock)."""

    __slots__ = ("_controls", "_now", "_registry", "_wall")

    def __init__(self, registry: HealthRegistry, controls: Controls) -> None:
        self._registry = registry
        self._controls = controls
        self._now = registry.clock()
        self._wall = controls.wall()

    def disabled(self, model: str) -> bool:
        return model in self._controls.disabled

    def signal(self, model: str, category: str | None) -> ModelSignal:
        registry = self._registry
        tracker = registry.models.get(model)
        breaker = registry.breakers.get(model)
        if tracker is None or breaker is None:
            return ModelSignal(slo=registry.slo(model))
        signal = tracker.signal(self._now, category, registry.slo(model),
                                registry.config_version)
        state = breaker.state(self._now)
        if state != "closed":
            free = breaker.probe_owner is None
            if state == "half_open" and free and not registry.may_probe(breaker, self._now):
                breaker.wanted = True  # traffic wants the probe: ask the fleet for the lease
                free = False
            signal = signal._replace(breaker=state, probe_free=free)
        return signal

    def override(self, model: str, category: str | None) -> Override | None:
        return self._controls.lookup(model, category, self._wall)


def attempt_sample(attempt: AttemptInfo) -> Sample:
    """How one finished attempt counts: failures the request caused (a 400, a context overflow)
    and client disconnects are neither success nor failure of the model."""
    failure = attempt.failure
    if failure is not None:
        blameless = failure.client_fault or failure.context_exceeded
        return Sample(ok=None if blameless else False)
    ttft = attempt.ttft_s
    if attempt.client_disconnected:
        return Sample(ok=None, ttft_s=ttft, cost_usd=attempt.cost_usd)
    ended = attempt.ended_at or attempt.started_at
    generation = ended - attempt.first_token_at if attempt.first_token_at is not None else 0.0
    tokens = attempt.usage.completion_tokens if attempt.usage is not None else 0
    return Sample(ok=attempt.error_after_first_byte is None,
                  latency_s=ended - attempt.started_at, ttft_s=ttft, output_tokens=tokens,
                  generation_s=generation, cost_usd=attempt.cost_usd)


class HealthObserver:
    """Feeds attempt outcomes into the registry as each attempt ends (a failing provider must
    count before the fallback's answer, which may be a long stream, has finished)."""

    def __init__(self, registry: HealthRegistry) -> None:
        self.registry = registry

    def on_request(self, ctx: RequestContext) -> None:
        pass

    def on_classified(self, ctx: RequestContext) -> None:
        pass

    def on_attempt_start(self, ctx: RequestContext, attempt: AttemptInfo,
                         request: httpx.Request) -> None:
        pass

    def on_attempt_end(self, ctx: RequestContext, attempt: AttemptInfo) -> None:
        # a failure retried on the same model counts in the windows; the retry is the verdict
        self.registry.record(attempt.model, attempt.provider, attempt_sample(attempt),
                             ctx.owner, verdict=not attempt.retried)

    def on_request_end(self, ctx: RequestContext, outcome: RequestOutcome) -> None:
        pass  # probe claims are released by the policy's settle (it always runs)
