"""The circuit breaker of one pool model, driven by an injected clock (no timers, no I/O).

While open the model is skipped. Recovery is found by live probes on a backoff: the first
probe may start ``probe_backoff_initial_s`` after the trip, each failed probe doubles the wait
up to ``cooldown_s``, and one success closes the breaker. So a dead provider sees at most one
probe per backoff step, and a recovered one serves again within about ``cooldown_s`` plus the
gap until the next request, however long the outage lasted.
"""

from __future__ import annotations

from typing import Literal, Protocol

from routegate.middleware.config import BreakerConfig

__all__ = ["Breaker", "BreakerState"]

BreakerState = Literal["closed", "open", "half_open"]


class _Counts(Protocol):
    def counts(self, now: float) -> tuple[int, int]: ...


class Breaker:
    """closed -> (failures) -> open -> (wait) -> one probe in flight -> closed, or open again
    with twice the wait (from ``probe_backoff_initial_s`` up to ``cooldown_s``)."""

    __slots__ = ("_open", "config", "consecutive", "opened_at", "opens", "probe_owner",
                 "probes_failed", "reason", "wait_s")

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.consecutive = 0
        self._open = False
        self.opened_at = 0.0  # when the current wait started (the trip, or the last probe)
        self.wait_s = 0.0  # the current backoff step
        self.opens = 0
        self.probes_failed = 0  # since the breaker last opened
        self.probe_owner: str | None = None  # RequestContext.owner of the single probe
        self.reason = ""

    def state(self, now: float) -> BreakerState:
        if not self._open:
            return "closed"
        return "half_open" if now >= self._probe_at() else "open"

    @property
    def next_probe_at(self) -> float | None:
        """When the next probe may start (clock time), None while closed."""
        return self._probe_at() if self._open else None

    def _probe_at(self) -> float:
        # capped again here: a reload may have shortened cooldown_s while the breaker is open
        return self.opened_at + min(self.wait_s, self.config.cooldown_s)

    def can_probe(self, now: float) -> bool:
        """Half-open and nobody probing yet: the next planned request may try the model."""
        return self.state(now) == "half_open" and self.probe_owner is None

    def claim_probe(self, owner: str) -> None:
        self.probe_owner = owner

    def release_probe(self, owner: str) -> None:
        if self.probe_owner == owner:
            self.probe_owner = None

    def record(self, now: float, ok: bool, window: _Counts, owner: str | None = None) -> None:
        """One verdict; ``window`` (the decision window's counts, this verdict included) is
        read only on failures. ``owner`` (the request's ``RequestContext.owner``) tells the
        probe from requests planned before the breaker opened."""
        if ok:
            self.consecutive = 0
            if self._open:
                self._open, self.probe_owner, self.reason = False, None, "probe succeeded"
            return
        self.consecutive += 1
        config = self.config
        if self._open:
            probe = (self.probe_owner is not None and self.probe_owner == owner) or (
                self.probe_owner is None and now >= self._probe_at())
            if probe:  # wait again, twice as long (a request planned before the open: no change)
                self.opened_at, self.probe_owner, self.reason = now, None, "probe failed"
                self.wait_s = min(self.wait_s * 2, config.cooldown_s)
                self.probes_failed += 1
            return
        if self.consecutive >= config.consecutive_failures:
            self._trip(now, f"{self.consecutive} consecutive failures")
        else:
            ok_count, failures = window.counts(now)
            requests = ok_count + failures
            if requests >= config.min_requests and failures / requests >= config.failure_rate:
                self._trip(now, f"failure rate {failures / requests:.0%} over "
                                f"{requests} requests")

    def _trip(self, now: float, reason: str) -> None:
        self._open, self.opened_at, self.reason = True, now, reason
        self.wait_s = min(self.config.probe_backoff_initial_s, self.config.cooldown_s)
        self.probes_failed = 0
        self.opens += 1

    def reset(self) -> None:
        self._open, self.consecutive, self.probe_owner, self.reason = False, 0, None, "reset"
