"""Operator state for the whole fleet (``[state] backend = "redis"``): weights, pins, disabled
models and reloads set through any replica's admin API reach every replica.

Redis holds the snapshot, one hash ``{prefix}operator``: a field per override
(``o:["model","category"]`` -> ``{"weight", "pin", "expires_at"}``), one per disabled model
(``d:model``), ``v`` (the version, +1 per change) and ``r`` / ``rs`` (how many reloads were
asked for, and whether the last allowed shrinking). Every field is written on its own, so two
operators changing different models at once on two replicas both win.

An admin change is written first (awaited, one MULTI within ``command_timeout_s``; if Redis
does not answer the admin API says 503 and nothing changes anywhere), then applied on this
replica and published; the others apply the event as it arrives (within a flush, well under
a second); every resync (``resync_interval_s``, and after the channel reconnects) reads the
whole hash, so a missed event heals. A snapshot older than the change this replica applied
last is ignored (a resync read that crossed an admin write).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any, Protocol

import msgspec
import redis.asyncio as redis

from routegate.middleware.config import GatewayConfig
from routegate.middleware.contracts import SharedEvent
from routegate.middleware.operations.feedback import FeedbackStore
from routegate.middleware.operations.model_health import Controls
from routegate.middleware.request.errors import GatewayError
from routegate.middleware.request.routing import Override
from routegate.middleware.state.feedback_sync import FleetFeedbackStore
from routegate.middleware.state.redis_state import RedisState

__all__ = ["CHANGE_TOPIC", "RELOAD_TOPIC", "OperatorSync", "override_field",
           "share_operator_state"]

log = logging.getLogger("routegate.state")
CHANGE_TOPIC = "operator.change"
RELOAD_TOPIC = "operator.reload"
_key_encoder = msgspec.json.Encoder()


class _Stored(msgspec.Struct, frozen=True):
    weight: float | None = None
    pin: bool = False
    expires_at: float | None = None


_stored_decoder = msgspec.json.Decoder(_Stored)
_pair_decoder = msgspec.json.Decoder(tuple[str, str])


def override_field(model: str, category: str) -> str:
    """The hash field of one override (JSON: any model or category name is safe in it)."""
    return "o:" + _key_encoder.encode([model, category]).decode()


class OperatorSync:
    """Keeps :class:`Controls` the same on every replica, and passes reloads on.

    ``models`` names the pool models this replica's config has (a disabled model its config
    dropped stays out); ``reload(allow_shrink)`` reloads this replica's own config file with
    its own checks, raising on a file it rejects."""

    def __init__(self, state: RedisState, controls: Controls,
                 models: Callable[[], Collection[str]],
                 reload: Callable[[bool], object]) -> None:
        self.state, self.controls = state, controls
        self._models, self._reload = models, reload
        self._key = state.key("operator")
        self.version = 0  # of the last change applied here
        self.reloads: int | None = None  # reload generation seen (None: none read yet)
        state.subscribe(CHANGE_TOPIC, self._on_change)
        state.subscribe(RELOAD_TOPIC, self._on_reload)
        state.add_resync_hook(self._resync)

    # -- this replica's admin API --------------------------------------------------------
    async def change(self, overrides: dict[tuple[str, str], Override | None],
                     disabled: dict[str, bool]) -> None:
        """Write a change to the fleet's snapshot (StateUnavailable: nothing changed), apply it
        here and tell the other replicas. ``None`` clears an override."""
        put = {override_field(m, c): msgspec.json.encode(_Stored(o.weight, o.pin, o.expires_at))
               .decode() for (m, c), o in overrides.items() if o is not None}
        put.update({f"d:{model}": "1" for model, off in disabled.items() if off})
        drop = [override_field(m, c) for (m, c), o in overrides.items() if o is None]
        drop += [f"d:{model}" for model, off in disabled.items() if not off]

        async def write(r: redis.Redis) -> int:
            pipe = r.pipeline(transaction=True)
            if put:
                pipe.hset(self._key, mapping=put)  # type: ignore[arg-type]
            if drop:
                pipe.hdel(self._key, *drop)
            pipe.hincrby(self._key, "v", 1)
            replies: list[Any] = await pipe.execute()
            return int(replies[-1])

        version = await self.state.call(write)
        self._apply(put, drop, version)
        self.state.publish(CHANGE_TOPIC, {"v": version, "put": put, "drop": drop})

    async def reloaded(self, allow_shrink: bool) -> int:
        """This replica reloaded its file: ask every other one to reload its own (the
        generation is kept, so a replica that missed the event reloads at its next resync)."""
        async def write(r: redis.Redis) -> int:
            pipe = r.pipeline(transaction=True)
            pipe.hincrby(self._key, "r", 1)
            pipe.hset(self._key, "rs", "1" if allow_shrink else "0")
            replies: list[Any] = await pipe.execute()
            return int(replies[0])

        generation = await self.state.call(write)
        self.reloads = max(self.reloads or 0, generation)
        self.state.publish(RELOAD_TOPIC, {"generation": generation, "allow_shrink": allow_shrink})
        return generation

    # -- the other replicas ----------------------------------------------------------------
    def _on_change(self, event: SharedEvent) -> None:
        payload = event.payload
        self._apply(payload["put"], payload["drop"], int(payload["v"]))

    def _apply(self, put: dict[str, str], drop: list[str], version: int) -> None:
        controls = self.controls
        for name, value in put.items():
            if name.startswith("o:"):
                model, category = _pair_decoder.decode(name[2:])
                stored = _stored_decoder.decode(value)
                controls.set(model, category, Override(stored.weight, stored.pin,
                                                       stored.expires_at))
            elif name.startswith("d:"):
                controls.disabled.add(name[2:])
        for name in drop:
            if name.startswith("o:"):
                controls.clear(*_pair_decoder.decode(name[2:]))
            elif name.startswith("d:"):
                controls.disabled.discard(name[2:])
        self.version = max(self.version, version)

    def _on_reload(self, event: SharedEvent) -> None:
        self._reload_to(int(event.payload["generation"]), bool(event.payload["allow_shrink"]),
                        event.origin)

    def _reload_to(self, generation: int, allow_shrink: bool, origin: str) -> None:
        if self.reloads is not None and generation <= self.reloads:
            return
        self.reloads = generation
        try:
            self._reload(allow_shrink)
        except GatewayError as exc:  # this replica's checks said no: it keeps its config
            log.warning("reload asked for by replica %s rejected here: %s", origin, exc.message)

    async def _resync(self, r: redis.Redis) -> None:
        raw: dict[Any, Any] = await r.hgetall(self._key)
        snapshot = {k.decode(): v.decode() for k, v in raw.items()}
        generation = int(snapshot.get("r", 0))
        if self.reloads is None:
            self.reloads = generation  # just started: this replica read its file already
        else:
            self._reload_to(generation, snapshot.get("rs") == "1", "(resync)")
        version = int(snapshot.get("v", 0))
        if version < self.version:
            return  # read before a change this replica has applied: the next one has it
        overrides: dict[tuple[str, str], Override] = {}
        disabled: set[str] = set()
        known = self._models()
        for name, value in snapshot.items():
            if name.startswith("o:"):
                stored = _stored_decoder.decode(value)
                overrides[_pair_decoder.decode(name[2:])] = Override(
                    stored.weight, stored.pin, stored.expires_at)
            elif name.startswith("d:") and name[2:] in known:
                disabled.add(name[2:])
        self.controls.replace(overrides, disabled)
        self.version = version


class _Host(Protocol):
    """The adaptive extension, as far as the fleet wiring needs it."""

    controls: Controls
    feedback: FeedbackStore

    @property
    def config(self) -> GatewayConfig: ...
    @property
    def admin(self) -> _Reloader: ...


class _Reloader(Protocol):
    def reload(self, allow_shrink: bool = False) -> dict[str, Any]: ...


def share_operator_state(state: RedisState, host: _Host) -> OperatorSync:
    """Wire the operator's state and the feedback memory of ``host`` into the fleet's."""
    FleetFeedbackStore(state, host.feedback, host.config.state.feedback_ttl_s)
    return OperatorSync(state, host.controls, lambda: host.config.models,
                        lambda allow_shrink: host.admin.reload(allow_shrink=allow_shrink))
