"""Feedback across replicas (``[state] backend = "redis"``): ``/v1/feedback`` for a request any
replica answered works on every replica.

The answering replica keeps its requests in memory as before (:mod:`..operations.feedback`),
and with every flush it also writes them to Redis, each for ``[state] feedback_ttl_s``:
``fb:r:["client","request id"]`` -> ``{"m": model, "c": category, "r": replica, "t": trace}``
(and ``fb:t:<trace id>`` -> the request's key). The client's name is part of the key, so a
lookup for one client cannot see another's requests: ownership holds exactly as on one replica.

A replica asked about a request it does not know looks it up there (awaited: feedback is off
the request path) and sends the vote to the replica that answered, which applies it like its
own: one vote per request, a later vote replaces the earlier one. If that replica is gone the
vote is applied here, and this replica takes the request over (its record names this one).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec
import redis.asyncio as redis

from routegate.middleware.contracts import SharedEvent, StateUnavailable
from routegate.middleware.operations.feedback import (
    FeedbackBody,
    FeedbackStore,
    SharedStateDown,
    not_found,
)
from routegate.middleware.request.errors import InvalidRequest
from routegate.middleware.state.redis_state import RedisState

__all__ = ["VOTE_TOPIC", "FleetFeedbackStore"]

VOTE_TOPIC = "feedback.vote"
_json = msgspec.json.Encoder()


class _Record(msgspec.Struct, frozen=True):
    m: str  # pool model that answered
    c: str | None  # its category
    r: str  # the replica holding the request's vote
    t: str | None = None  # trace ID


_record_decoder = msgspec.json.Decoder(_Record)
_owner_decoder = msgspec.json.Decoder(tuple[str | None, str])


class FleetFeedbackStore:
    """The fleet half of a replica's :class:`FeedbackStore` (it is its ``fleet``)."""

    def __init__(self, state: RedisState, store: FeedbackStore, ttl_s: float) -> None:
        self.state, self.store = state, store
        self.ttl_ms = int(ttl_s * 1000)
        # queued by remember() (one append per answer), sent with the next flush; bounded like
        # the memory itself while Redis is away
        store.pending = deque(maxlen=store.capacity)
        store.fleet = self
        state.add_flush_hook(self._flush)
        state.subscribe(VOTE_TOPIC, self._on_vote)

    def _request_key(self, client: str | None, request_id: str) -> str:
        return self.state.key("fb:r:" + _json.encode([client, request_id]).decode())

    async def _flush(self, r: redis.Redis) -> None:
        pending = self.store.pending
        if not pending:
            return
        batch = list(pending)
        pending.clear()
        replica = self.state.replica_id
        try:
            pipe = r.pipeline(transaction=False)
            for (client, request_id), entry in batch:
                key = self._request_key(client, request_id)
                answered = entry.answered
                pipe.set(key, _json.encode(_Record(answered.model, answered.category, replica,
                                                   entry.trace_id)), px=self.ttl_ms)
                if entry.trace_id is not None:
                    pipe.set(self.state.key(f"fb:t:{entry.trace_id}"),
                             _json.encode([client, request_id]), px=self.ttl_ms)
            await pipe.execute()
        except BaseException:
            pending.extendleft(reversed(batch))  # in order, before newer ones (the cap holds)
            raise

    # -- a vote for a request this replica does not know -----------------------------------
    async def vote(self, feedback: FeedbackBody, score: float,
                   owners: tuple[str | None, ...], at: float) -> dict[str, object]:
        try:
            found = await self.state.call(lambda r: self._lookup(r, feedback, owners))
            if found is None:
                raise not_found()
            (client, request_id), record = found
            holder = record.r
            me = self.state.replica_id
            if holder != me and (await self.state.replicas()).get(holder, {}).get("alive"):
                self.state.publish(VOTE_TOPIC, {
                    "to": holder, "client": client, "request_id": request_id,
                    "model": record.m, "category": record.c, "trace_id": record.t,
                    "score": score, "vote_category": feedback.category, "at": at})
                return {"recorded": True, "model": record.m,
                        "category": feedback.category or record.c, "score": score,
                        "replaced": None, "replica": holder}
            if holder != me:  # gone: this replica holds the request's vote from now on
                adopted = msgspec.structs.replace(record, r=me)
                await self.state.call(lambda r: r.set(
                    self._request_key(client, request_id), _json.encode(adopted),
                    keepttl=True))
        except StateUnavailable:
            raise SharedStateDown("Feedback for a request another replica answered needs the "
                                  "shared state (Redis), which is unavailable; retry later") \
                from None
        entry = self.store.adopt((client, request_id), record.m, record.c, record.t)
        return {**self.store.vote(entry, score, feedback.category, at), "replica": me}

    async def _lookup(self, r: redis.Redis, feedback: FeedbackBody,
                      owners: tuple[str | None, ...]
                      ) -> tuple[tuple[str | None, str], _Record] | None:
        """The one request of ``owners`` with that request or trace ID (400 if several)."""
        if feedback.request_id:
            keys = [self._request_key(owner, feedback.request_id) for owner in owners]
            values: list[Any] = await r.mget(keys)
            hits = [(owner, value) for owner, value in zip(owners, values, strict=True)
                    if value is not None]
            if len(hits) > 1:
                raise InvalidRequest("Several clients sent requests with this request_id: name "
                                     "the one meant in `client`", param="client")
            if hits:
                return (hits[0][0], feedback.request_id), _record_decoder.decode(hits[0][1])
        if feedback.trace_id:
            pointer = await r.get(self.state.key(f"fb:t:{feedback.trace_id.lower()}"))
            if pointer is not None:
                client, request_id = _owner_decoder.decode(pointer)
                value = await r.get(self._request_key(client, request_id))
                if client in owners and value is not None:
                    return (client, request_id), _record_decoder.decode(value)
        return None

    # -- a vote another replica received for a request this one answered -------------------
    def _on_vote(self, event: SharedEvent) -> None:
        vote = event.payload
        if vote["to"] != self.state.replica_id:
            return
        entry = self.store.adopt((vote["client"], vote["request_id"]), vote["model"],
                                 vote["category"], vote["trace_id"])
        self.store.vote(entry, float(vote["score"]), vote["vote_category"], float(vote["at"]))
