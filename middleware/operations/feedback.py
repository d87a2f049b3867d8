"""Quality feedback: ``POST {prefix}/feedback`` scores an answered request.

The gateway remembers which pool model answered which request (and for which category) in a
bounded map; a score (0..1) or a pass/fail for one of those requests goes into that model's
quality window for that category, which the router reads (``slo.min_quality``).

    POST /v1/feedback  {"request_id": "...", "score": 0.0}     or  {"trace_id": "...", "pass": true}

Feedback cannot be used to steer routing for others: a request is remembered under the pair
(client key name, request ID), so a client repeating another client's ``x-request-id`` cannot
re-point that request's entry, and only the client that made a request (or the admin token)
may score it; trace IDs (unique, made by the gateway) live in their own map. Each request
holds one vote: a later vote replaces the earlier one in the quality window, which therefore
counts distinct requests, not votes. Each client may post ``adaptive.feedback_per_minute``
times in any minute.

With ``[state] backend = "redis"`` (``middleware/state/feedback_sync.py``) the answered
requests also go to Redis, and a replica that does not know a request asks there: the vote
then goes to the replica that answered it, so one request still holds one vote fleet-wide.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from routegate.middleware.contracts import RequestContext, RequestOutcome
from routegate.middleware.operations.budgets import RateLimited, SlidingWindowLimit
from routegate.middleware.operations.model_health import HealthRegistry
from routegate.middleware.request.errors import GatewayError, InvalidRequest

__all__ = ["Answered", "FeedbackBody", "FeedbackStore", "FleetFeedback", "SharedStateDown"]

_Key = tuple[str | None, str]  # (client name, request ID)


@dataclass(frozen=True, slots=True)
class Answered:
    model: str
    category: str | None


@dataclass(slots=True)
class _Entry:
    """One answered request and its vote (if any)."""

    answered: Answered  # shared by every request of the same (model, category)
    trace_id: str | None = None
    score: float | None = None  # the vote in the quality window
    voted_at: float = 0.0  # registry clock when it went in
    voted_category: str | None = None
    voted_wall: float = 0.0  # unix time the vote was received (orders a replica's votes)


class FeedbackBody(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str | None = None
    trace_id: str | None = None
    score: float | None = None
    # "pass" is a Python keyword: the JSON key maps onto `passed`
    passed: bool | None = msgspec.field(default=None, name="pass")
    category: str | None = None  # overrides the remembered category (e.g. explicit-model calls)
    comment: str | None = None  # accepted, not stored
    client: str | None = None  # admin token only: whose request_id (when clients share an ID)


_decoder = msgspec.json.Decoder(FeedbackBody)
_NOT_FOUND = "No answered request with that ID is remembered (unknown, failed or too old)"


class SharedStateDown(GatewayError):
    """A fleet-wide step (an operator change, feedback for another replica's answer) needs the
    shared state, and it did not answer within its timeout: nothing was changed."""

    status = 503
    type = "service_unavailable"
    code = "state_unavailable"


def not_found() -> GatewayError:
    return GatewayError(_NOT_FOUND, status=404, code="request_not_found")


class FleetFeedback(Protocol):
    """The requests the other replicas answered (``[state] backend = "redis"``)."""

    async def vote(self, feedback: FeedbackBody, score: float,
                   owners: tuple[str | None, ...], at: float) -> dict[str, object]: ...


class FeedbackStore:
    """(client, request ID) -> the answer and its vote, the least recently answered forgotten
    past ``capacity``. An OrderedDict: forgetting the oldest is O(1) (a plain dict's first key
    is found by skipping every deleted slot before it: measured 18 -> 144 µs per request once
    100,000 IDs were held), and a client's reused ``x-request-id`` moves to the young end."""

    def __init__(self, registry: HealthRegistry, capacity: int = 100_000,
                 wall: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.wall = wall
        self.capacity = max(1, capacity)
        # with a fleet: answered requests waiting for the next flush to Redis, and Redis itself
        self.pending: deque[tuple[_Key, _Entry]] | None = None
        self.fleet: FleetFeedback | None = None
        self._answered: OrderedDict[_Key, _Entry] = OrderedDict()  # oldest first
        self._traces: dict[str, _Key] = {}  # trace ID -> the request it belongs to
        self._shared: dict[tuple[str, str | None], Answered] = {}  # one per (model, category)
        self._rates: dict[str | None, SlidingWindowLimit] = {}
        self.received = 0

    def remember(self, ctx: RequestContext, outcome: RequestOutcome) -> None:
        if outcome.model is None or outcome.result != "success":
            return
        shared = (outcome.model, ctx.category)
        answered = self._shared.get(shared)
        if answered is None:
            answered = self._shared[shared] = Answered(*shared)
        entry = _Entry(answered)
        for name, value in ctx.response_headers:
            if name == b"x-trace-id":
                entry.trace_id = value.decode("latin-1")
        key = (ctx.client, ctx.request_id)
        answered_map = self._answered
        old = answered_map.pop(key, None)
        if old is not None:  # the same client reused its ID: the entry names the latest answer
            self._forget_trace(key, old)
        answered_map[key] = entry
        if entry.trace_id is not None:
            self._traces[entry.trace_id] = key
        while len(answered_map) > self.capacity:
            self._forget_trace(*answered_map.popitem(last=False))
        if self.pending is not None:
            self.pending.append((key, entry))

    def adopt(self, key: _Key, model: str, category: str | None,
              trace_id: str | None = None) -> _Entry:
        """The entry of a request another replica answered (this one now holds its vote)."""
        entry = self._answered.get(key)
        if entry is None or entry.answered.model != model:
            shared = (model, category)
            answered = self._shared.get(shared)
            if answered is None:
                answered = self._shared[shared] = Answered(*shared)
            entry = self._answered[key] = _Entry(answered, trace_id)
            if trace_id is not None:
                self._traces[trace_id] = key
            while len(self._answered) > self.capacity:
                self._forget_trace(*self._answered.popitem(last=False))
        return entry

    def _forget_trace(self, key: _Key, entry: _Entry) -> None:
        if entry.trace_id is not None and self._traces.get(entry.trace_id) == key:
            del self._traces[entry.trace_id]

    def lookup(self, request_id: str | None, trace_id: str | None,
               client: str | None = None) -> Answered | None:
        """The answer remembered for ``client``'s request or trace ID."""
        found = self._find(request_id, trace_id, (client,))
        return None if found is None else found[1].answered

    def _find(self, request_id: str | None, trace_id: str | None,
              clients: Iterable[str | None]) -> tuple[_Key, _Entry] | None:
        """The one request of ``clients`` with that ID (400 if several)."""
        owners = set(clients)
        if request_id:
            hits = [((owner, request_id), entry) for owner in owners
                    if (entry := self._answered.get((owner, request_id))) is not None]
            if len(hits) > 1:
                raise InvalidRequest("Several clients sent requests with this request_id: name "
                                     "the one meant in `client`", param="client")
            if hits:
                return hits[0]
        if trace_id:
            traced = self._traces.get(trace_id.lower())
            entry = None if traced is None else self._answered.get(traced)
            if traced is not None and entry is not None and traced[0] in owners:
                return traced, entry
        return None

    def check_rate(self, client: str | None, per_minute: int) -> None:
        """429 past ``per_minute`` (0: no limit) feedback posts of one client in any minute."""
        if per_minute <= 0:
            return
        limit = self._rates.get(client)
        if limit is None:
            limit = self._rates[client] = SlidingWindowLimit(per_minute)
        limit.limit = per_minute  # follows a reload
        now = self.registry.clock()
        wait = limit.retry_after(now)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise RateLimited(f"Feedback limit of {per_minute} per minute reached; "
                              f"retry in {seconds}s", headers={"retry-after": str(seconds)})
        limit.add(now)

    async def submit(self, body: bytes, categories: tuple[str, ...], *,
                     client: str | None = None,
                     admin_clients: Iterable[str | None] | None = None) -> dict[str, object]:
        """Validate and record one feedback body of ``client``; with the admin token
        (``admin_clients``: every client there is) any client's request may be scored. A
        request this replica does not know is looked up in the fleet's memory, if there is
        one. Returns what was recorded."""
        feedback, score, owners = self._parse(body, categories, client, admin_clients)
        found = self._find(feedback.request_id, feedback.trace_id, owners)
        if found is not None:
            return self.vote(found[1], score, feedback.category)
        if self.fleet is None:
            raise not_found()
        return await self.fleet.vote(feedback, score, owners, self.wall())

    def _parse(self, body: bytes, categories: tuple[str, ...], client: str | None,
               admin_clients: Iterable[str | None] | None
               ) -> tuple[FeedbackBody, float, tuple[str | None, ...]]:
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
        if admin_clients is None:
            owners: tuple[str | None, ...] = (client,)  # another client's IDs look unknown
        else:
            owners = ((feedback.client,) if feedback.client is not None
                      else tuple(admin_clients))
        return feedback, score, owners

    def vote(self, entry: _Entry, score: float, category: str | None,
             at: float | None = None) -> dict[str, object]:
        """One vote for an answered request: it replaces the request's earlier vote. A vote
        another replica received at unix time ``at`` is dropped if this one holds a vote
        received later (the messages crossed)."""
        answered = entry.answered
        category = category or answered.category
        result: dict[str, object] = {"recorded": True, "model": answered.model,
                                     "category": category, "score": score,
                                     "replaced": entry.score is not None}
        if at is not None and entry.score is not None and at < entry.voted_wall:
            return {**result, "recorded": False}
        registry = self.registry
        if entry.score is not None:  # one vote per request: the later one replaces it
            tracker = registry.models.get(answered.model)
            if tracker is not None:
                tracker.retract_quality(entry.voted_at, entry.voted_category, entry.score)
        now = registry.clock()
        registry.record_quality(answered.model, category, score, now)
        entry.score, entry.voted_at, entry.voted_category = score, now, category
        entry.voted_wall = self.wall() if at is None else at
        self.received += 1
        return result
