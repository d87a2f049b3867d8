"""Breakers and health shared by the replicas (``[state] backend = "redis"``).

* **Breaker transitions** (tripped, probe failed, probe succeeded, operator reset) are
  published as events; every other replica adopts them (same reason, same backoff step), so a
  provider one replica found dead is skipped by all without failing on it first.
* **One half-open probe for the fleet**: a replica whose breaker is half-open and whose traffic
  wants the probe takes a short lease (``SET NX PX``) in the flush, in the background; only the
  lease holder's view offers the probe. The holder extends the lease while its probe is in
  flight, drops it when the probe succeeds, and keeps it (unowned) until the next probe is due
  when the probe fails, so no replica that has not yet heard of the failure probes early. A
  holder that dies leaves a lease that expires after ``lease_s``; a probe may start in the
  lease's first half only (the second half covers the flush that extends it); a holder whose
  traffic does not use it by then drops it. When no flush has reached
  Redis for ``lease_s``, each replica probes on its own (as a lone gateway does).
* **Health that shifts traffic**: each flush writes this replica's decision windows (request
  counts and the latency and TTFT histograms) and per-category quality sums under a key that
  expires after ``heartbeat_ttl_s``, and reads the other replicas' keys in the same round
  trip. Routing adds them to its own window when it recomputes a signal (once per tick, not per
  request). Every replica uses the same histogram bins, so counts, error rates and quality
  means combine exactly and the fleet's p95 is read from the summed histograms (as accurate as
  one replica's, within a bin); the approximation is in time: the others' windows are as of
  their last folded tick, read at most a flush interval after they wrote them.

Routing never awaits any of this: it reads what the flush left in the registry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal, Protocol

import msgspec

from routegate.middleware.contracts import SharedEvent
from routegate.middleware.operations.breaker import Breaker, BreakerChange
from routegate.middleware.operations.model_health import HealthRegistry
from routegate.middleware.operations.sliding_windows import Aggregate
from routegate.middleware.state.redis_state import StateSettings

__all__ = ["HealthSync", "ModelSummary", "ReplicaHealth", "combine"]

log = logging.getLogger("routegate.state")
TOPIC = "breaker"
LeaseAction = Literal["take", "extend", "release"]
# Extend the lease (ARGV[2] ms) or drop it (ARGV[2] = 0), only if this replica holds it.
LEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class ModelSummary(msgspec.Struct, array_like=True, omit_defaults=True):
    """One model's decision window (and quality sums per category) on one replica."""

    ok: int = 0
    fail: int = 0
    lat: dict[int, int] = {}  # histogram bin -> samples (non-empty bins only)
    ttft: dict[int, int] = {}
    quality: dict[str, tuple[float, int]] = {}  # category -> (score sum, samples)


class ReplicaHealth(msgspec.Struct):
    models: dict[str, ModelSummary]


class BreakerEvent(msgspec.Struct):
    model: str
    change: BreakerChange
    at: float  # unix time of the transition (its age moves the wait's start back)
    reason: str = ""
    wait_s: float = 0.0
    probes_failed: int = 0


class Shared(Protocol):
    """What this needs of :class:`~routegate.middleware.state.redis_state.RedisState`."""

    replica_id: str

    @property
    def settings(self) -> StateSettings: ...
    def key(self, name: str) -> str: ...
    def publish(self, topic: str, payload: dict[str, Any]) -> None: ...
    def subscribe(self, topic: str, handler: Any) -> None: ...
    def add_flush_hook(self, hook: Any) -> None: ...


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ReplicaHealth).decode


def summarize(registry: HealthRegistry, now: float) -> ReplicaHealth:
    """This replica's decision windows and quality sums (models with no samples left out)."""
    models: dict[str, ModelSummary] = {}
    for name, tracker in registry.models.items():
        decision, quality = tracker.local(now)
        sums = {c: (q.q_sum, q.q_n) for c, q in quality.items() if q.q_n}
        if decision.ok or decision.fail or decision.lat_n or decision.ttft_n or sums:
            models[name] = ModelSummary(
                decision.ok, decision.fail, _sparse(decision.lat), _sparse(decision.ttft), sums)
    return ReplicaHealth(models)


def combine(replicas: list[ReplicaHealth]
            ) -> dict[str, tuple[Aggregate, dict[str, tuple[float, int]]]]:
    """Several replicas' summaries summed per model: (decision window, quality sums)."""
    out: dict[str, tuple[Aggregate, dict[str, tuple[float, int]]]] = {}
    for replica in replicas:
        for name, summary in replica.models.items():
            entry = out.get(name)
            if entry is None:
                entry = out[name] = (Aggregate(), {})
            total, quality = entry
            total.ok += summary.ok
            total.fail += summary.fail
            for hist, sparse in ((total.lat, summary.lat), (total.ttft, summary.ttft)):
                for index, count in sparse.items():
                    if 0 <= index < len(hist):
                        hist[index] += count
            for category, (q_sum, q_n) in summary.quality.items():
                old_sum, old_n = quality.get(category, (0.0, 0))
                quality[category] = (old_sum + q_sum, old_n + q_n)
    for total, _ in out.values():
        total.lat_n, total.ttft_n = sum(total.lat), sum(total.ttft)
    return out


def _sparse(hist: list[int]) -> dict[int, int]:
    return {index: count for index, count in enumerate(hist) if count}


class HealthSync:
    """Wires one replica's :class:`HealthRegistry` to the fleet (see the module docstring)."""

    def __init__(self, shared: Shared, registry: HealthRegistry) -> None:
        self.shared, self.registry = shared, registry
        settings = shared.settings
        # Longer than a few flushes and command timeouts: a loop stall must not let a lease
        # lapse while its probe is in flight.
        self.lease_s = max(2.0, 8 * settings.flush_interval_s, 2 * settings.command_timeout_s)
        self._ttl_ms = max(1, int(settings.heartbeat_ttl_s * 1000))
        self._held: set[str] = set()  # models whose lease key this replica set
        self._peers: list[str] = []
        self._gone: list[str] = []
        self._seen: tuple[int, list[bytes | None]] = (-1, [])  # (config version, summaries)
        self._script: Any = None
        self._forget: asyncio.TimerHandle | None = None

    def install(self) -> HealthSync:
        registry = self.registry
        registry.fleet = True
        registry.fleet_until = registry.clock() + self.lease_s
        for breaker in registry.breakers.values():
            breaker.lease_until = 0.0
        registry.on_breaker = self._changed
        self.shared.subscribe(TOPIC, self._adopt)
        self.shared.add_flush_hook(self._flush)
        return self

    # -- breaker events ------------------------------------------------------------------
    def _changed(self, model: str, change: BreakerChange) -> None:
        breaker = self.registry.breakers[model]
        self.shared.publish(TOPIC, msgspec.to_builtins(BreakerEvent(
            model, change, time.time(), breaker.reason, breaker.wait_s, breaker.probes_failed)))

    def _adopt(self, event: SharedEvent) -> None:
        try:
            message = msgspec.convert(event.payload, BreakerEvent)
        except msgspec.ValidationError:
            log.warning("shared state: a breaker event that is not routegate's")
            return
        breaker = self.registry.breakers.get(message.model)
        if breaker is None:  # a replica with another config (mid-reload)
            return
        age = max(0.0, time.time() - message.at)
        if age > breaker.config.cooldown_s:  # queued while Redis was down: outdated
            return
        breaker.adopt(self.registry.clock() - age, message.change, message.reason,
                      message.wait_s, message.probes_failed)

    # -- the flush: health summaries and probe leases, one round trip ----------------------
    async def _flush(self, redis: Any) -> None:
        shared, registry = self.shared, self.registry
        if self._script is None:
            self._script = redis.register_script(LEASE_SCRIPT)
        now = registry.clock()
        me, index = shared.replica_id, shared.key("health:replicas")
        peers = self._peers
        pipe = redis.pipeline(transaction=False)
        pipe.set(shared.key(f"health:{me}"), _encode(summarize(registry, now)), px=self._ttl_ms)
        pipe.sadd(index, me)
        pipe.pexpire(index, self._ttl_ms)
        if self._gone:
            pipe.srem(index, *self._gone)
        pipe.smembers(index)
        if peers:
            pipe.mget([shared.key(f"health:{peer}") for peer in peers])
        leases = await self._queue_leases(pipe, now)
        replies = await pipe.execute()
        registry.fleet_until = registry.clock() + self.lease_s
        if self._forget is not None:
            self._forget.cancel()
        # Redis out of reach for a heartbeat: the others' windows are gone, not frozen
        self._forget = asyncio.get_running_loop().call_later(
            self.shared.settings.heartbeat_ttl_s, self._read_peers, [], [])
        self._apply_leases(leases, replies[len(replies) - len(leases):], now)
        first = 4 if self._gone else 3
        self._gone = []
        self._read_peers(peers, replies[first + 1] if peers else [])
        self._peers = sorted(p for p in map(_text, replies[first]) if p != me)

    async def _queue_leases(self, pipe: Any, now: float) -> list[tuple[LeaseAction, str, Breaker]]:
        """Queue this flush's lease commands: (action, model, breaker) in pipeline order."""
        me, lease_ms = self.shared.replica_id, int(self.lease_s * 1000)
        queued: list[tuple[LeaseAction, str, Breaker]] = []
        for model, breaker in self.registry.breakers.items():
            half_open = breaker.state(now) == "half_open"
            key = self.shared.key(f"probe:{model}")
            if model in self._held:
                if not half_open:  # the probe ended: closed, or open until the next probe
                    due = breaker.next_probe_at
                    hold_ms = 0 if due is None else max(1, int((due - now) * 1000))
                    await self._script(keys=[key], args=[me, str(hold_ms)], client=pipe)
                    queued.append(("release", model, breaker))
                elif breaker.probe_owner is not None:
                    await self._script(keys=[key], args=[me, str(lease_ms)], client=pipe)
                    queued.append(("extend", model, breaker))
                elif breaker.lease_until <= now:  # unused: let another replica have it
                    await self._script(keys=[key], args=[me, "0"], client=pipe)
                    queued.append(("release", model, breaker))
            elif half_open and breaker.wanted and breaker.probe_owner is None:
                breaker.wanted = False
                pipe.set(key, me, nx=True, px=lease_ms)
                queued.append(("take", model, breaker))
        return queued

    def _apply_leases(self, queued: list[tuple[LeaseAction, str, Breaker]], replies: list[Any],
                      now: float) -> None:
        for (action, model, breaker), reply in zip(queued, replies, strict=True):
            # A probe may start in the lease's first half only: one that starts late still
            # has half a lease for a flush to extend it before another replica could take it.
            usable = now + self.lease_s / 2
            if action == "take":
                if reply:
                    self._held.add(model)
                    breaker.lease_until = usable
            elif action == "release":
                self._held.discard(model)
                breaker.lease_until = 0.0
            elif reply:  # extended
                breaker.lease_until = usable
            else:  # lost (Redis restarted, or a stall let it lapse): the probe goes on
                self._held.discard(model)
                breaker.lease_until = 0.0

    def _read_peers(self, peers: list[str], raw: list[bytes | None]) -> None:
        self._gone = [peer for peer, value in zip(peers, raw, strict=True) if value is None]
        seen = (self.registry.config_version, raw)  # a reload may bring fresh trackers
        if seen == self._seen:
            return  # nothing new: keep the cached signals
        self._seen = seen
        summaries = []
        for value in raw:
            if value is not None:
                try:
                    summaries.append(_decode(value))
                except msgspec.DecodeError:
                    log.warning("shared state: a health summary that is not routegate's")
        combined = combine(summaries)
        for name, tracker in self.registry.models.items():
            decision, quality = combined.get(name, (None, {}))
            if decision is not None or tracker.remote is not None:
                tracker.set_remote(decision, quality)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

