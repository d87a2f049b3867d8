"""Quality feedback: ``POST {prefix}/feedback`` scores an answered request.

The gateway remembers which pool model answered which request (and for which category) in a
bounded map keyed by request ID and, when tracing is on, trace ID; a score (0..1) or a
pass/fail for one of those IDs goes into that model's quality window for that category, which
the router reads (``slo.min_quality``).

    POST /v1/feedback  {"request_id": "...", "score": 0.0}     or  {"trace_id": "...", "pass": true}
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import msgspec

from routegate.middleware.errors import GatewayError, InvalidRequest
from routegate.middleware.health import HealthRegistry
from routegate.middleware.observe import RequestContext, RequestOutcome

__all__ = ["Answered", "FeedbackBody", "FeedbackStore"]


@dataclass(frozen=True, slots=True)
class Answered:
    model: str
    category: str | None


class FeedbackBody(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str | None = None
    trace_id: str | None = None
    score: float | None = None
    # "pass" is a Python keyword: the JSON key maps onto `passed`
    passed: bool | None = msgspec.field(default=None, name="pass")
    category: str | None = None  # overrides the remembered category (e.g. explicit-model calls)
    comment: str | None = None  # accepted, not stored


_decoder = msgspec.json.Decoder(FeedbackBody)


class FeedbackStore:
    """request/trace ID -> (model, category), the least recently answered forgotten past
    ``capacity``. An OrderedDict: forgetting the oldest is O(1) (a plain dict's first key is
    found by skipping every deleted slot before it: measured 18 -> 144 µs per request once
    100,000 IDs were held), and a client's reused ``x-request-id`` moves to the young end."""

    def __init__(self, registry: HealthRegistry, capacity: int = 100_000) -> None:
        self.registry = registry
        self.capacity = max(1, capacity)
        self._answered: OrderedDict[str, Answered] = OrderedDict()  # oldest first
        self._shared: dict[tuple[str, str | None], Answered] = {}  # one per (model, category)
        self.received = 0

    def remember(self, ctx: RequestContext, outcome: RequestOutcome) -> None:
        if outcome.model is None or outcome.result != "success":
            return
        key = (outcome.model, ctx.category)
        answered = self._shared.get(key)
        if answered is None:
            answered = self._shared[key] = Answered(*key)
        self._put(ctx.request_id, answered)
        for name, value in ctx.response_headers:
            if name == b"x-trace-id":
                self._put("trace:" + value.decode("latin-1"), answered)

    def _put(self, key: str, answered: Answered) -> None:
        answered_map = self._answered
        if key in answered_map:
            answered_map.move_to_end(key)
        answered_map[key] = answered
        while len(answered_map) > self.capacity:
            answered_map.popitem(last=False)

    def lookup(self, request_id: str | None, trace_id: str | None) -> Answered | None:
        if request_id:
            found = self._answered.get(request_id)
            if found is not None:
                return found
        if trace_id:
            return self._answered.get("trace:" + trace_id.lower())
        return None

    def apply(self, body: bytes, categories: tuple[str, ...]) -> dict[str, object]:
        """Validate and record one feedback body; returns what was recorded."""
        try:
            feedback = _decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise InvalidRequest(f"Invalid feedback: {exc}") from exc
        if not feedback.request_id and not feedback.trace_id:
            raise InvalidRequest("Send `request_id` (the x-request-id of the answer) or "
                                 "`trace_id`", param="request_id")
        if (feedback.score is None) == (feedback.passed is None):
            raise InvalidRequest("Send exactly one of `score` (0..1) or `pass` (true/false)",
                                 param="score")
        score = float(feedback.passed) if feedback.passed is not None else feedback.score
        assert score is not None
        if not 0.0 <= score <= 1.0:
            raise InvalidRequest("`score` must be within 0..1", param="score")
        if feedback.category is not None and feedback.category not in categories:
            raise InvalidRequest(f"Unknown category `{feedback.category}`", param="category")
        answered = self.lookup(feedback.request_id, feedback.trace_id)
        if answered is None:
            raise GatewayError("No answered request with that ID is remembered (unknown, failed "
                               "or too old)", status=404, code="request_not_found")
        category = feedback.category or answered.category
        self.registry.record_quality(answered.model, category, score)
        self.received += 1
        return {"recorded": True, "model": answered.model, "category": category, "score": score}
