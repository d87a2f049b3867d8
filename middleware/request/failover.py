"""What the attempt loop does after a failure before the first byte: retry the same model,
move on to the next one, or leave some out.

One :class:`Failover` per request, no I/O and no clock (the relay sleeps and keeps the
deadline), so every rule here is a plain function of the failures seen so far:

* a 429 (or any status) with a ``Retry-After`` of at most ``retry.retry_after_cap_s``: that
  wait, then the same model once;
* a 500/502/503 (without a longer Retry-After): the same model again after the jittered
  backoff, ``retry.same_model_5xx`` times, then the next model (a one-off hiccup should not
  cost the cheaper model the request). Same-model retries do not count in
  ``retry.max_attempts``, which bounds the models tried;
* a context-length error: the next model at once, leaving out those that cannot hold the
  prompt: route candidates need a larger window than every model that overflowed; the failed
  models' own ``fallbacks`` are kept unless their window is known to be smaller (tokenizers
  differ, and the operator listed them for a reason);
* anything else: the next model after the backoff.
"""

from __future__ import annotations

import random

from routegate.middleware.config import ModelConfig, RetryConfig
from routegate.middleware.contracts import UpstreamFailure

__all__ = ["RETRIED_STATUSES", "Failover", "backoff"]

RETRIED_STATUSES = frozenset({500, 502, 503})  # one-off server errors worth a second try


class Failover:
    """The fallback decisions of one request (see the module docstring)."""

    __slots__ = ("_context_failed", "_declared", "_floor", "_retries", "_retry",
                 "_waited", "context_failure", "failures", "retries")

    def __init__(self, retry: RetryConfig) -> None:
        self._retry = retry
        self.failures: list[tuple[str, UpstreamFailure]] = []
        self.context_failure: UpstreamFailure | None = None
        self._floor = 0  # the largest planning window that overflowed
        self._context_failed: set[str] = set()
        # explicit fallbacks of models that overflowed -> largest known window that overflowed
        self._declared: dict[str, int | None] = {}
        self._retries: dict[str, int] = {}
        self.retries = 0  # same-model retries granted (not counted in retry.max_attempts)
        self._waited: set[str] = set()

    def skip(self, name: str, model: ModelConfig) -> bool:
        """Leave ``name`` out: after a context-length error it cannot hold the prompt."""
        if self.context_failure is None:
            return False
        if name in self._context_failed:
            return True
        if name in self._declared:
            reference = self._declared[name]
            return (model.context_window is not None and reference is not None
                    and model.context_window < reference)
        return model.window <= self._floor

    def after(self, name: str, model: ModelConfig, failure: UpstreamFailure, *,
              probe: bool = False) -> tuple[bool, float]:
        """Record a failed attempt on ``name``; returns (retry the same model, seconds to wait
        first). A wait of 0 means go on at once. A breaker's probe (``probe``) is not retried
        on a 5xx: one attempt per backoff step is all a provider that may be down gets."""
        self.failures.append((name, failure))
        if failure.context_exceeded:
            self._overflowed(name, model, failure)
            return False, 0.0
        retry = self._retry
        wait = backoff(len(self.failures), retry.backoff_base_s, retry.backoff_max_s)
        retries = self._retries.get(name, 0)
        if (failure.retry_after_s is not None and failure.retry_after_s <= retry.retry_after_cap_s
                and name not in self._waited):
            self._waited.add(name)  # the provider said when: retry it once
            wait = failure.retry_after_s
        elif (probe or failure.status not in RETRIED_STATUSES or retries >= retry.same_model_5xx
              or failure.retry_after_s is not None):  # a long Retry-After: not now, move on
            return False, wait
        self._retries[name] = retries + 1
        self.retries += 1
        return True, wait

    def _overflowed(self, name: str, model: ModelConfig, failure: UpstreamFailure) -> None:
        self.context_failure = failure
        self._context_failed.add(name)
        self._floor = max(self._floor, model.window)
        for fallback in model.fallbacks:
            known = [w for w in (self._declared.get(fallback), model.context_window)
                     if w is not None]
            self._declared[fallback] = max(known) if known else None


def backoff(failures: int, base: float, cap: float) -> float:
    """Full jitter: spreads retries so a provider that hiccups is not hit in lockstep."""
    return random.uniform(0.0, min(cap, base * 2 ** (failures - 1)))
