"""The circuit breaker of one pool model, driven by an injected clock (no timers, no I/O).

While open the model is skipped. Recovery is found by live probes on a backoff: the first
probe may start ``probe_backoff_initial_s`` after the trip, each failed probe doubles the wait
up to ``cooldown_s``, and one success closes the breaker. So a dead provider sees at most one
probe per backoff step, and a recovered one serves again within about ``cooldown_s`` plus the
gap until the next request, however long the outage lasted.

With several replicas (``[state] backend = "redis"``) every transition :meth:`Breaker.record`
reports is sent to the others, which :meth:`Breaker.adopt` it, and the half-open probe needs
a fleet-wide lease (``lease_until``, taken in the background by
:mod:`routegate.middleware.state.health_sync`); alone, a breaker always holds its lease.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

from routegate.middleware.config import BreakerConfig

__all__ = ["Breaker", "BreakerChange", "BreakerState"]

BreakerState = Literal["closed", "open", "half_open"]
# What a verdict changed: tripped, a probe failed (open again, twice the wait), a probe
# succeeded, or an operator reset it.
BreakerChange = Literal["opened", "reopened", "closed", "reset"]


class _Counts(Protocol):
    def counts(self, now: float) -> tuple[int, int]: ...


class Breaker:
    """closed -> (failures) -> open -> (wait) -> one probe in flight -> closed, or open again
    with twice the wait (from ``probe_backoff_initial_s`` up to ``cooldown_s``)."""

    __slots__ = ("_open", "config", "consecutive", "lease_until", "opened_at", "opens",
                 "probe_owner", "probes_failed", "reason", "wait_s", "wanted")

    def __init__(self, config: BreakerConfig, *, leased: bool = True) -> None:
        self.config = config
        self.consecutive = 0
        self._open = False
        self.opened_at = 0.0  # when the current wait started (the trip, or the last probe)
        self.wait_s = 0.0  # the current backoff step
        self.opens = 0
        self.probes_failed = 0  # since the breaker last opened
        self.probe_owner: str | None = None  # RequestContext.owner of the single probe
        self.reason = ""
        # Until when this replica holds the fleet's probe lease (clock time; forever for a
        # lone gateway). ``wanted``: a request found the breaker half-open without it.
        self.lease_until = math.inf if leased else 0.0
        self.wanted = False

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
        """Half-open, this replica holds the probe lease and nobody probes yet: the next
        planned request may try the model."""
        return (self.state(now) == "half_open" and self.probe_owner is None
                and self.lease_until > now)

    def claim_probe(self, owner: str) -> None:
        self.probe_owner = owner

    def release_probe(self, owner: str) -> None:
        if self.probe_owner == owner:
            self.probe_owner = None

    def record(self, now: float, ok: bool, window: _Counts,
               owner: str | None = None) -> BreakerChange | None:
        """One verdict; ``window`` (the decision window's counts, this verdict included) is
        read only on failures. ``owner`` (the request's ``RequestContext.owner``) tells the
        probe from requests planned before the breaker opened. Returns what changed."""
        if ok:
            self.consecutive = 0
            if self._open:
                self._open, self.probe_owner, self.reason = False, None, "probe succeeded"
                return "closed"
            return None
        self.consecutive += 1
        config = self.config
        if self._open:
            probe = (self.probe_owner is not None and self.probe_owner == owner) or (
                self.probe_owner is None and now >= self._probe_at())
            if probe:  # wait again, twice as long (a request planned before the open: no change)
                self.opened_at, self.probe_owner, self.reason = now, None, "probe failed"
                self.wait_s = min(self.wait_s * 2, config.cooldown_s)
                self.probes_failed += 1
                return "reopened"
            return None
        if self.consecutive >= config.consecutive_failures:
            self._trip(now, f"{self.consecutive} consecutive failures")
            return "opened"
        ok_count, failures = window.counts(now)
        requests = ok_count + failures
        if requests >= config.min_requests and failures / requests >= config.failure_rate:
            self._trip(now, f"failure rate {failures / requests:.0%} over {requests} requests")
            return "opened"
        return None

    def _trip(self, now: float, reason: str) -> None:
        self._open, self.opened_at, self.reason = True, now, reason
        self.wait_s = min(self.config.probe_backoff_initial_s, self.config.cooldown_s)
        self.probes_failed = 0
        self.opens += 1

    def reset(self) -> None:
        self._open, self.consecutive, self.probe_owner, self.reason = False, 0, None, "reset"

    def adopt(self, now: float, change: BreakerChange, reason: str, wait_s: float,
              probes_failed: int) -> None:
        """Take over a transition another replica's breaker made (its ``record``'s answer):
        the same state, reason and backoff step, the wait counted from ``now`` (the moment
        it happened, on this replica's clock)."""
        if change == "reset":
            self.reset()
        elif change == "closed":
            self._open, self.consecutive, self.probe_owner, self.reason = False, 0, None, reason
        else:
            if not self._open:
                self.opens += 1
            # a probe of ours still in flight is no longer the probe: its verdict must not
            # double the wait a second time
            self._open, self.opened_at, self.probe_owner, self.reason = True, now, None, reason
            self.wait_s, self.probes_failed = wait_s, probes_failed
