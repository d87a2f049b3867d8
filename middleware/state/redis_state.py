"""Live state shared by every replica through Redis or Valkey (``[state] backend = "redis"``).

What crosses the network, and when:

* budgets and rate limits: one atomic script per admitted request (:mod:`.scripts`), awaited,
  bounded by ``command_timeout_s``; settling is queued and sent with the next flush (the
  reservation stays held until then, so a late settle can only make a budget stricter);
* everything else (events such as a breaker opening, health summaries, the heartbeat, the
  feedback memory) is batched into one pipeline every ``flush_interval_s`` (sooner when an
  event is queued); events reach the other replicas through one pub/sub channel, and a
  periodic resync (``resync_interval_s``) heals a missed message.

Routing never waits on any of it: it reads the local view that these messages update.

When Redis is unreachable, calls fail fast with :class:`StateUnavailable` (no retries, no
waiting past the timeout), the incident is logged once (and its end once), and what must
reach Redis later (settles, spend made while it was down) stays queued until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import msgspec
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from routegate.middleware.contracts import ReserveVerdict, SharedEvent, StateUnavailable
from routegate.middleware.state.pipelined import PipelinedRedis
from routegate.middleware.state.scripts import RESERVE, SETTLE_BATCH

__all__ = ["RedisState", "StateSettings"]

log = logging.getLogger("routegate.state")
T = TypeVar("T")
MAX_CONNECTIONS = 32
MAX_QUEUED = 200_000  # settles and events kept while Redis is down (then the oldest go)


class StateSettings(Protocol):
    """The ``[state]`` section (``middleware.config.StateConfig`` has this shape)."""

    @property
    def key_prefix(self) -> str: ...
    @property
    def connect_timeout_s(self) -> float: ...
    @property
    def command_timeout_s(self) -> float: ...
    @property
    def flush_interval_s(self) -> float: ...
    @property
    def resync_interval_s(self) -> float: ...
    @property
    def heartbeat_ttl_s(self) -> float: ...


_events = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(SharedEvent)


class RedisState:
    """One replica's connection to the shared state, with its flush and listen loops
    (:class:`~routegate.middleware.contracts.SharedState`)."""

    shared = True

    def __init__(self, settings: StateSettings, url: str, replica_id: str) -> None:
        self.settings = settings
        self.replica_id = replica_id
        self.prefix = settings.key_prefix
        # A bounded pool: a burst waits for a connection (within the command timeout) instead
        # of opening hundreds; no retries, so nothing waits past the timeout.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=None,
            socket_connect_timeout=settings.connect_timeout_s,
            retry=Retry(NoBackoff(), 0),  # call() bounds every command: no second timeout
            health_check_interval=0, client_name=f"routegate:{replica_id}")
        self._redis = redis.Redis(connection_pool=pool)
        self._hot = PipelinedRedis(url, settings.connect_timeout_s)  # budget checks only
        self._scripts = {RESERVE: _sha(RESERVE), SETTLE_BATCH: _sha(SETTLE_BATCH)}
        self._channel = f"{self.prefix}events"
        self._settles: list[tuple[str, str, str, str, str]] = []
        self._outbox: list[bytes] = []
        self._handlers: dict[str, list[Callable[[SharedEvent], None]]] = {}
        self._flush_hooks: list[Callable[[redis.Redis], Awaitable[None]]] = []
        self._resync_hooks: list[Callable[[redis.Redis], Awaitable[None]]] = []
        self._heartbeat: Callable[[], dict[str, Any]] = dict
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.available = False
        self.down_since: float | None = time.time()  # until the first answer
        self.incidents = 0
        self.last_error = ""

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (bounded by the timeouts; a Redis that is down now is retried by the loops,
        the gateway starts degraded) and start the flush and listen loops."""
        with contextlib.suppress(StateUnavailable):
            await self.call(lambda r: r.ping())
        self._tasks = [asyncio.create_task(self._flush_loop(), name="routegate-state-flush"),
                       asyncio.create_task(self._listen_loop(), name="routegate-state-listen")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(StateUnavailable):
            await self._flush_once()  # the last settles and the heartbeat's removal
            await self.call(lambda r: r.delete(self.key(f"replica:{self.replica_id}")))
        self._hot.close()
        await self._redis.aclose()

    # -- calls ---------------------------------------------------------------------------
    def key(self, name: str) -> str:
        return self.prefix + name

    async def call(self, command: Callable[[redis.Redis], Awaitable[T]]) -> T:
        """Run one command (or pipeline) within ``command_timeout_s``; StateUnavailable else."""
        try:
            async with asyncio.timeout(self.settings.command_timeout_s):
                result = await command(self._redis)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise StateUnavailable(type(exc).__name__) from None
        self._recovered()
        return result

    def _failed(self, exc: BaseException) -> None:
        # The exception text may carry the URL (and its password): only the type is kept.
        self.last_error = type(exc).__name__
        if self.available or self.incidents == 0:
            self.available, self.down_since = False, time.time()
            self.incidents += 1
            log.warning("shared state (Redis) unreachable (%s): budgets follow on_unavailable, "
                        "routing uses this replica's view until it is back", self.last_error)

    def _recovered(self) -> None:
        if not self.available:
            if self.incidents:
                log.warning("shared state (Redis) reachable again after %.1f s",
                            time.time() - (self.down_since or time.time()))
            self.available, self.down_since = True, None
            self._wake.set()  # send what queued up while it was down

    async def _run(self, r: redis.Redis, script: str, *args: str, keys: int) -> Any:
        """EVALSHA, loading the script once if this Redis does not know it (a restart)."""
        try:
            return await r.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._scripts[script], keys, *args)
        except NoScriptError:
            await r.script_load(script)
            return await r.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._scripts[script], keys, *args)

    async def _reserve(self, *args: str) -> Any:
        """RESERVE on the pipelined connection (the one command per request on the hot path)."""
        try:
            return await self._hot.execute("EVALSHA", self._scripts[RESERVE], "7", *args)
        except NoScriptError:
            await self._hot.execute("SCRIPT", "LOAD", RESERVE)
            return await self._hot.execute("EVALSHA", self._scripts[RESERVE], "7", *args)

    # -- budgets and rate limits -----------------------------------------------------------
    def _client_keys(self, client: str, day: str, month: str) -> list[str]:
        base = self.key(f"c:{client}:")
        return [base + "holds", base + "amounts", base + f"day:{day}", base + f"month:{month}",
                base + "rate", base + "counts", base + "reserved"]

    async def reserve(self, client: str, hold_id: str, amount: float, *, daily_usd: float,
                      monthly_usd: float, requests_per_minute: int, day: str, month: str,
                      hold_ttl_s: float) -> ReserveVerdict:
        """Rate limit, then hold ``amount`` against the budgets, as one atomic step."""
        keys = self._client_keys(client, day, month)
        reply = await self.call(lambda _: self._reserve(
            *keys, repr(amount), hold_id, str(int(hold_ttl_s * 1000)), repr(daily_usd),
            repr(monthly_usd), str(requests_per_minute), "60000"))
        outcome = _text(reply[0])
        if outcome == "rate":
            return ReserveVerdict("rate", retry_after_s=float(_text(reply[1])) / 1000)
        if outcome == "ok":
            return ReserveVerdict("ok", float(_text(reply[1])), float(_text(reply[2])))
        if outcome == "daily":
            return ReserveVerdict("daily", float(_text(reply[1])), float(_text(reply[2])))
        if outcome == "monthly":
            return ReserveVerdict("monthly", float(_text(reply[1])), float(_text(reply[2])))
        raise StateUnavailable(f"unexpected reply {outcome!r}")

    def settle(self, client: str, hold_id: str, charged: float, *, day: str, month: str) -> None:
        """Release the hold and charge ``charged`` USD with the next flush (kept while Redis
        is down, sent again until Redis confirms; charged once per ``hold_id``)."""
        self._settles.append((client, hold_id, repr(charged), day, month))
        if len(self._settles) > MAX_QUEUED:
            del self._settles[0]
            log.error("shared state: settle queue full, oldest charge dropped")

    async def client_totals(self, clients: list[str], day: str, month: str
                            ) -> dict[str, dict[str, float]]:
        """Fleet-wide spend, holds and counts per client (for /admin/stats)."""
        async def read(r: redis.Redis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for client in clients:
                _, amounts, day_key, month_key, _, counts, _ = self._client_keys(client, day,
                                                                                     month)
                pipe.get(day_key)
                pipe.get(month_key)
                pipe.hvals(amounts)
                pipe.hgetall(counts)
            return await pipe.execute()

        replies = await self.call(read)
        out = {}
        for i, client in enumerate(clients):
            day_spent, month_spent, held, counts = replies[4 * i: 4 * i + 4]
            counts = {_text(k): int(v) for k, v in counts.items()}
            out[client] = {"spent_today_usd": float(day_spent or 0),
                           "spent_month_usd": float(month_spent or 0),
                           "reserved_usd": sum(float(v) for v in held),
                           "in_flight": len(held), "requests": counts.get("requests", 0),
                           "rejected": counts.get("rejected", 0)}
        return out

    # -- events, hooks, heartbeat -----------------------------------------------------------
    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Send an event to every other replica (with the next flush, which this wakes)."""
        self._outbox.append(_events.encode(SharedEvent(topic, self.replica_id, payload)))
        if len(self._outbox) > MAX_QUEUED:
            del self._outbox[0]
        self._wake.set()

    def subscribe(self, topic: str, handler: Callable[[SharedEvent], None]) -> None:
        self._handlers.setdefault(topic, []).append(handler)

    def add_flush_hook(self, hook: Callable[[redis.Redis], Awaitable[None]]) -> None:
        """``hook`` runs in every flush (inside the command timeout; keep it to a pipeline)."""
        self._flush_hooks.append(hook)

    def add_resync_hook(self, hook: Callable[[redis.Redis], Awaitable[None]]) -> None:
        """``hook`` runs every ``resync_interval_s`` and after the channel reconnects."""
        self._resync_hooks.append(hook)

    def set_heartbeat(self, describe: Callable[[], dict[str, Any]]) -> None:
        self._heartbeat = describe

    async def replicas(self) -> dict[str, dict[str, Any]]:
        """Every replica seen in the last hour: its last heartbeat and whether it is alive."""
        async def read(r: redis.Redis) -> tuple[list[Any], list[Any]]:
            seen: list[Any] = await r.zrange(self.key("replicas"), 0, -1, withscores=True)
            names = [_text(entry[0]) for entry in seen]
            beats = await r.mget([self.key(f"replica:{n}") for n in names]) if names else []
            return seen, beats

        seen, beats = await self.call(read)
        out: dict[str, dict[str, Any]] = {}
        for (name, last), beat in zip(seen, beats, strict=True):
            info = msgspec.json.decode(beat) if beat else {}
            out[_text(name)] = {"alive": beat is not None, "last_seen": last / 1000, **info}
        return out

    def status(self) -> dict[str, object]:
        return {"backend": "redis", "replica": self.replica_id, "available": self.available,
                "degraded": not self.available, "incidents": self.incidents,
                "down_since": self.down_since, "last_error": self.last_error or None}

    # -- loops ---------------------------------------------------------------------------
    async def _flush_once(self) -> None:
        settles, self._settles = self._settles, []
        outbox, self._outbox = self._outbox, []
        ttl = self.settings.heartbeat_ttl_s
        now_ms = int(time.time() * 1000)
        beat = _events.encode(self._heartbeat())

        async def send(r: redis.Redis) -> None:
            if settles:
                await self._run(r, SETTLE_BATCH, self.prefix,
                                *(value for settle in settles for value in settle), keys=0)
            pipe = r.pipeline(transaction=False)
            for message in outbox:
                pipe.publish(self._channel, message)
            pipe.set(self.key(f"replica:{self.replica_id}"), beat, px=int(ttl * 1000))
            pipe.zadd(self.key("replicas"), {self.replica_id: now_ms})
            pipe.zremrangebyscore(self.key("replicas"), "-inf", now_ms - 3_600_000)
            await pipe.execute()

        try:
            await self.call(send)
        except StateUnavailable:
            self._settles[:0], self._outbox[:0] = settles, outbox  # in order, before newer ones
            raise
        for hook in self._flush_hooks:
            await self.call(hook)

    async def _resync(self) -> None:
        for hook in self._resync_hooks:
            await self.call(hook)

    async def _flush_loop(self) -> None:
        interval = self.settings.flush_interval_s
        next_resync = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush_once()
                if time.monotonic() >= next_resync:
                    await self._resync()
                    next_resync = time.monotonic() + self.settings.resync_interval_s
            except StateUnavailable:
                await asyncio.sleep(interval)  # down: try again next tick, not in a spin
            except Exception:  # a broken hook must not stop the loop
                log.exception("shared state: flush failed")
                await asyncio.sleep(interval)

    async def _listen_loop(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                with contextlib.suppress(StateUnavailable):
                    await self._resync()  # heal whatever was missed while unsubscribed
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message["data"])
            except (RedisError, OSError) as exc:
                self._failed(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(self.settings.flush_interval_s)

    def _dispatch(self, data: bytes) -> None:
        try:
            event = _event_decoder.decode(data)
        except msgspec.DecodeError:
            log.warning("shared state: an event that is not routegate's on %s", self._channel)
            return
        if event.origin == self.replica_id:
            return
        for handler in self._handlers.get(event.topic, ()):
            try:
                handler(event)
            except Exception:
                log.exception("shared state: handler for %r failed", event.topic)


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # what Redis names a loaded script by


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
