"""Sticky routing per conversation (``[sessions] enabled = true``).

A conversation's ``auto`` turns stay on the pool model that answered it: multi-turn chats that
flip between a cheap and a strong model on every follow-up lose context quality and prompt-cache
discounts. The conversation key is

* the client's ``x-routegate-session`` header, or, without one (and ``derive = true``),
* the conversation's start (system prompt, first user message, first assistant reply), for a
  request with more than one user turn (a single-turn request is routed like any other);

either way only a sha256 of it (with the client key's name, so clients never share a key) is
kept, never the text. The pin is the pool model that last answered the conversation, held
``ttl_s`` after that answer, and moves only up or away:

* the pinned model is in the plan and capable for this turn's category (capability at least
  the route's ``min_capability``): it goes first (``x-routegate-session: kept``);
* it failed and a fallback answered, or it is unavailable (breaker open, disabled, weight 0,
  no key): the plan is used as it is, and the model that answers becomes the pin (``moved``);
* this turn's category needs a capability the pinned model lacks: the plan's stronger model
  answers and becomes the pin (``escalated``). A turn that needs less never moves it down, and
  a merely unsure classification (low confidence) does not move it either;
* an operator's pin on another model for the category wins (``moved``).

Memory is bounded: an LRU of ``max_entries`` conversations whose expired entries are dropped
as new ones arrive. Looking a pin up is one dict get; with sessions disabled the request path
pays one attribute test. With ``[state] backend = "redis"`` the pins are the fleet's
(``middleware/state/session_sync.py``): changes go out as events into every replica's LRU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

import msgspec

from routegate.middleware.config import GatewayConfig, SessionsConfig
from routegate.middleware.contracts import RequestContext
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.request.routing import Plan

__all__ = ["SESSION_HEADER", "SessionStore", "Verdict", "conversation_key"]

SESSION_HEADER = "x-routegate-session"
Verdict = Literal["new", "kept", "moved", "escalated"]
_PINNED_REASON = "this conversation's model (sticky session)"
_encode = msgspec.json.Encoder().encode
# A refreshed expiry is announced to the other replicas only once it has moved by this share
# of ttl_s: each turn of a busy conversation is not an event (their copy may expire this much
# earlier than the answering replica's).
_ANNOUNCE_SHARE = 0.1


def conversation_key(request: ClientRequest, headers: dict[str, str], client: str | None,
                     derive: bool) -> str | None:
    """The conversation's key (a hash), or None when the request is not part of one."""
    given = headers.get(SESSION_HEADER)
    if given:
        material = b"h\0" + given.encode("utf-8", "replace")
    elif not derive:
        return None
    else:
        users = 0
        start: list[object] = []  # first system, user and assistant contents
        seen: set[str] = set()
        for message in request.chat.messages:
            role = message.role
            if role == "user":
                users += 1
            if role in ("system", "user", "assistant") and role not in seen:
                seen.add(role)
                start.append(message.content)
        if users < 2:
            return None
        material = b"d\0" + _encode(start)
    name = (client or "").encode()
    return hashlib.sha256(name + b"\0" + material).hexdigest()[:32]


class _Pin:
    __slots__ = ("announced", "expires_at", "model")

    def __init__(self, model: str, expires_at: float, announced: float) -> None:
        self.model, self.expires_at, self.announced = model, expires_at, announced


class SessionStore:
    """Conversation key -> pinned pool model, least recently answered first out.

    ``announce(key, model, expires_at)`` (set by the fleet wiring) hears every change worth
    telling the other replicas; :meth:`apply` takes theirs without announcing again."""

    def __init__(self, settings: SessionsConfig, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.ttl_s, self.capacity = settings.ttl_s, settings.max_entries
        self._pins: OrderedDict[str, _Pin] = OrderedDict()  # oldest answer first
        self.announce: Callable[[str, str, float], None] | None = None
        self.verdicts: dict[str, int] = {"new": 0, "kept": 0, "moved": 0, "escalated": 0}

    def configure(self, settings: SessionsConfig) -> None:
        """Follow a reload (pins are kept; a smaller capacity drops the oldest)."""
        self.ttl_s, self.capacity = settings.ttl_s, settings.max_entries
        while len(self._pins) > self.capacity:
            self._pins.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pins)

    def status(self) -> dict[str, object]:
        """For /readyz: pins held and how turns were decided since start."""
        return {"entries": len(self._pins), **self.verdicts}

    def pinned(self, key: str) -> str | None:
        """The conversation's model, or None (unknown or expired)."""
        pin = self._pins.get(key)
        if pin is None:
            return None
        if pin.expires_at <= self.wall():
            del self._pins[key]
            return None
        return pin.model

    def stick(self, ctx: RequestContext, request: ClientRequest, plan: Plan,
              config: GatewayConfig) -> tuple[Plan, str | None]:
        """``plan`` with the conversation's model first where it may stay (module docstring),
        and the conversation's key (None: the request is not part of one). The verdict goes
        to the client in ``x-routegate-session``."""
        key = conversation_key(request, ctx.headers, ctx.client, config.sessions.derive)
        if key is None:
            return plan, None
        verdict, plan = _stick(self.pinned(key), plan, config)
        self.verdicts[verdict] += 1
        ctx.response_headers.append((b"x-routegate-session", verdict.encode()))
        return plan, key

    def put(self, key: str, model: str) -> None:
        """``model`` answered the conversation: it is the pin for another ``ttl_s``."""
        now = self.wall()
        expires_at = now + self.ttl_s
        pins = self._pins
        pin = pins.pop(key, None)
        announce = self.announce
        if pin is None or pin.model != model:
            pin = _Pin(model, expires_at, expires_at)
        else:
            pin.expires_at = expires_at
            if expires_at - pin.announced < self.ttl_s * _ANNOUNCE_SHARE:
                announce = None  # the others' copy is recent enough
            else:
                pin.announced = expires_at
        pins[key] = pin
        self._trim(now)
        if announce is not None:
            announce(key, model, expires_at)

    def apply(self, key: str, model: str, expires_at: float) -> None:
        """Another replica's pin (the later expiry wins when both changed it)."""
        now = self.wall()
        if expires_at <= now:
            return
        pin = self._pins.get(key)
        if pin is not None and pin.expires_at > expires_at:
            return
        self._pins.pop(key, None)
        self._pins[key] = _Pin(model, expires_at, expires_at)
        self._trim(now)

    def _trim(self, now: float) -> None:
        pins = self._pins
        while len(pins) > self.capacity:
            pins.popitem(last=False)
        # pins are refreshed in answer order, so the expired ones sit at the old end
        while pins:
            oldest = next(iter(pins.values()))
            if oldest.expires_at > now:
                break
            pins.popitem(last=False)


def _stick(model: str | None, plan: Plan, config: GatewayConfig) -> tuple[Verdict, Plan]:
    if model is None:
        return "new", plan
    models = plan.models
    if not models or models[0] == model:
        return ("kept" if models else "moved"), plan
    category = plan.category
    if category is not None:
        route = config.routes.get(category)
        pinned = config.models.get(model)
        if pinned is None:
            return "moved", plan  # a reload removed it
        capable = (
            pinned.capabilities.get(category, 0.0) >= (plan.min_capability or 0.0)
            or (route is not None and model in route.candidates))
        if not capable:
            return "escalated", plan  # this turn needs more than the pinned model has
    if model not in models:
        return "moved", plan  # unavailable (breaker, disabled, weight 0, no key)
    first = plan.candidates[0] if plan.candidates else None
    if first is not None and first.pinned:
        return "moved", plan  # an operator pinned another model for this category
    kept = [c for c in plan.candidates if not c.dropped]
    chosen = [c._replace(reasons=(_PINNED_REASON, *c.reasons)) for c in kept if c.model == model]
    candidates = (*chosen, *(c for c in plan.candidates if c.model != model))
    return "kept", dataclasses.replace(
        plan, models=(model, *(m for m in models if m != model)), candidates=candidates,
        reason=f"{plan.reason}; {_PINNED_REASON}: {model}")
