"""Sticky sessions across replicas (``[state] backend = "redis"``): a conversation continued on
another replica keeps its model.

Routing never waits on Redis: every replica routes from its own LRU
(:class:`~routegate.middleware.request.sessions.SessionStore`), which this keeps in step.

* A pin that changes (a new conversation, a moved or escalated pin, or an expiry pushed out by
  more than a tenth of ``ttl_s``) is published as an event with the next flush; the others
  apply it to their LRU as it arrives (well under a second). The later expiry wins.
* Each is also written through: ``{prefix}sess:<key>`` -> model, expiring with the pin, and
  the index ``{prefix}sess`` (key -> expiry in ms; expired members and all but the newest
  ``max_entries`` are trimmed with each write).
* A replica that starts, or whose connection to Redis was lost (events may have been missed),
  reads the newest pins once (at most ``max_entries``, and 10,000) at its next resync. No
  lookup on a miss: a conversation whose pin this replica does not hold is routed as new.

Only the conversation key (a hash; see ``sessions.py``) and the pool model's name are stored.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import redis.asyncio as redis

from routegate.middleware.contracts import SharedEvent
from routegate.middleware.request.sessions import SessionStore
from routegate.middleware.state.redis_state import RedisState

__all__ = ["PIN_TOPIC", "SessionSync"]

PIN_TOPIC = "session.pin"
STARTUP_READ = 10_000  # pins read at start or after reconnecting (newest first)
_CHUNK = 1000


class SessionSync:
    """Publishes this replica's pin changes and applies the others' (module docstring)."""

    def __init__(self, state: RedisState, store: SessionStore) -> None:
        self.state, self.store = state, store
        self._index = state.key("sess")
        self._pending: deque[tuple[str, str, float]] = deque(maxlen=100_000)
        self._loaded: int | None = None  # state.incidents when the pins were last read
        store.announce = self._announce
        state.subscribe(PIN_TOPIC, self._on_pin)
        state.add_flush_hook(self._flush)
        state.add_resync_hook(self._resync)

    def _announce(self, key: str, model: str, expires_at: float) -> None:
        self.state.publish(PIN_TOPIC, {"k": key, "m": model, "x": expires_at})
        self._pending.append((key, model, expires_at))

    def _on_pin(self, event: SharedEvent) -> None:
        payload = event.payload
        self.store.apply(str(payload["k"]), str(payload["m"]), float(payload["x"]))

    async def _flush(self, r: redis.Redis) -> None:
        if not self._pending:
            return
        batch = list(self._pending)
        self._pending.clear()
        try:
            pipe = r.pipeline(transaction=False)
            for key, model, expires_at in batch:
                pipe.set(self.state.key(f"sess:{key}"), model, pxat=int(expires_at * 1000))
            pipe.zadd(self._index, {key: int(x * 1000) for key, _, x in batch})
            pipe.zremrangebyscore(self._index, "-inf", int(time.time() * 1000))
            pipe.zremrangebyrank(self._index, 0, -self.store.capacity - 1)
            await pipe.execute()
        except BaseException:
            self._pending.extendleft(reversed(batch))  # sent with the next flush that works
            raise

    async def _resync(self, r: redis.Redis) -> None:
        incidents = self.state.incidents
        if self._loaded == incidents:
            return  # read already, and no event can have been missed since
        limit = min(self.store.capacity, STARTUP_READ)
        members: list[Any] = await r.zrevrangebyscore(
            self._index, "+inf", int(time.time() * 1000), start=0, num=limit, withscores=True)
        pins: list[tuple[str, float]] = [(_text(m), float(score) / 1000) for m, score in members]
        for start in range(0, len(pins), _CHUNK):
            chunk = pins[start:start + _CHUNK]
            models: list[Any] = await r.mget([self.state.key(f"sess:{k}") for k, _ in chunk])
            for (key, expires_at), model in reversed(list(zip(chunk, models, strict=True))):
                if model is not None:  # oldest first: the newest end up youngest in the LRU
                    self.store.apply(key, _text(model), expires_at)
        self._loaded = incidents


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
