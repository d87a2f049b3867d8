"""Client API keys, USD budgets and request rate limits.

Keys are configured by their sha256 hex digest only (``[clients.NAME] key_sha256 = ...``);
a request's ``Authorization: Bearer <key>`` (or ``x-api-key``) is hashed and looked up. With
no clients configured the gateway is open, as before.

Budgets are concurrency-safe by reservation: admitting a request reserves its worst-case cost
(prompt estimate plus ``max_tokens`` at the priciest model of its plan) against the client's
daily and monthly budgets, and settling it replaces the reservation with the real cost. Check
and reserve happen in one synchronous step on the event loop, so however many requests arrive
together, spent + reserved never exceeds the budget; the real cost can only come in under the
reservation (unless a provider ignores ``max_tokens``). Each reservation is held under its own
ID and released exactly once, so overlapping requests can neither leave a phantom reservation
behind nor cancel each other's; a reservation is never below the prompt's own cost.

``requests_per_minute`` is a true sliding window: in any 60 seconds at most that many requests
are admitted (no burst on top).

With ``[state] backend = "redis"`` the same check-and-reserve runs as one script in Redis
(:mod:`routegate.middleware.state.scripts`), so the guarantee holds across every replica; when
Redis cannot be reached, ``on_unavailable`` says whether this replica admits on its own
accounting ("open", the spend is sent to Redis once it is back) or refuses with 503 ("closed").
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from routegate.middleware.config import ClientConfig, GatewayConfig, ModelConfig
from routegate.middleware.contracts import SharedState, StateUnavailable
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.request.errors import GatewayError, Unauthorized

__all__ = [
    "BudgetExceeded",
    "ClientLimiter",
    "LimitsUnavailable",
    "RateLimited",
    "Reservation",
    "SlidingWindowLimit",
    "budget_period",
    "hash_key",
    "reservation_usd",
]

# Output tokens reserved when a request sets no max_tokens.
DEFAULT_RESERVED_OUTPUT_TOKENS = 4096


def hash_key(key: str) -> str:
    """What goes into ``clients.NAME.key_sha256`` for a key."""
    return hashlib.sha256(key.encode()).hexdigest()


class BudgetExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class LimitsUnavailable(GatewayError):
    """The shared budgets cannot be checked and ``on_unavailable = "closed"``."""

    status = 503
    type = "service_unavailable"
    code = "budget_unavailable"


class SlidingWindowLimit:
    """At most ``limit`` events in any ``span_s`` seconds: the times of the admitted events in
    the window, oldest first (memory is bounded by ``limit``)."""

    __slots__ = ("_times", "limit", "span_s")

    def __init__(self, limit: int, span_s: float = 60.0) -> None:
        self.limit, self.span_s = limit, span_s
        self._times: deque[float] = deque()

    def retry_after(self, now: float) -> float:
        """0 when an event may happen now, else the seconds until the oldest one slides out."""
        times = self._times
        while times and times[0] <= now - self.span_s:
            times.popleft()
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.span_s - now

    def add(self, now: float) -> None:
        self._times.append(now)


@dataclass(slots=True)
class _Account:
    config: ClientConfig
    day: str = ""
    month: str = ""
    spent_day: float = 0.0
    spent_month: float = 0.0
    reserved: float = 0.0  # the sum of ``holds``
    holds: dict[int, float] = field(default_factory=dict)  # reservation id -> USD, in flight
    requests: int = 0
    rejected: int = 0
    rate: SlidingWindowLimit | None = None
    history: dict[str, float] = field(default_factory=dict)  # day -> spent


@dataclass(frozen=True, slots=True)
class Reservation:
    client: str
    amount: float
    id: int = 0
    hold: str = ""  # the hold's id in the shared state ("": held by this replica only)
    day: str = ""  # the UTC day and month it was admitted in (what settling charges)
    month: str = ""


def reservation_usd(request: ClientRequest, models: list[ModelConfig]) -> float:
    """Worst-case cost of a request over the models that may answer it: every message byte a
    token (generous), plus max_tokens (or 4096) of output, at the priciest model."""
    chat = request.chat
    prompt_tokens = sum(len(raw) for raw in request.fields.values())
    # both limits set: some servers honour one, some the other, so reserve for the larger
    output = max(chat.max_completion_tokens or 0, chat.max_tokens or 0)
    output = output or DEFAULT_RESERVED_OUTPUT_TOKENS
    # validated upstream (>= 1); clamped again so a reservation can never undercut the prompt
    output = max(0, output) * max(1, chat.n or 1)
    if not models:
        return 0.0
    return max(0.0, max(prompt_tokens * m.input_usd_per_mtok + output * m.output_usd_per_mtok
                        for m in models) / 1_000_000)


class ClientLimiter:
    """Authenticates client keys and holds their budgets and rate limits."""

    def __init__(self, config: GatewayConfig, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.wall, self.clock = wall, clock  # budget days; rate-limit windows
        self.accounts: dict[str, _Account] = {}
        self._by_digest: dict[str, str] = {}
        self._ids = itertools.count(1)
        # in shared hold ids: unique across restarts even when a replica keeps its name
        self._boot = secrets.token_hex(4)
        self.shared: SharedState | None = None  # set by the adaptive extension for "redis"
        self.on_unavailable: Literal["open", "closed"] = "open"
        self.hold_ttl_s = 480.0
        self.configure(config)

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def configure(self, config: GatewayConfig) -> None:
        """(Re)load client definitions; spending of clients that stay is kept."""
        self.on_unavailable = config.state.on_unavailable
        # A hold outlives its request by a margin: the longest a request can take (first byte
        # deadline, then one attempt's total) plus a minute. A dead replica's holds expire then.
        longest = max((p.timeouts.total_s for p in config.providers.values()), default=300.0)
        self.hold_ttl_s = config.server.request_timeout_s + longest + 60.0
        accounts: dict[str, _Account] = {}
        for name, client in config.clients.items():
            account = self.accounts.get(name) or _Account(client)
            rpm = client.requests_per_minute
            if rpm <= 0:
                account.rate = None
            elif account.rate is None:
                account.rate = SlidingWindowLimit(rpm)
            else:
                account.rate.limit = rpm  # the admissions already in the window still count
            account.config = client
            accounts[name] = account
        self.accounts = accounts
        self._by_digest = {c.key_sha256.lower(): name for name, c in config.clients.items()}

    def authenticate(self, headers: dict[str, str]) -> str | None:
        """The client's name; None when no keys are configured. 401 on a missing/unknown key."""
        if not self._by_digest:
            return None
        auth = headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            key = headers.get("x-api-key", "")
        key = key.strip()
        if not key:
            raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`")
        name = self._by_digest.get(hash_key(key))
        if name is None:
            raise Unauthorized("Invalid API key")
        return name

    def _roll(self, account: _Account, now: float) -> None:
        day, month = budget_period(now)
        if account.day != day:
            if account.day:
                account.history[account.day] = account.spent_day
                for old in sorted(account.history)[:-62]:
                    del account.history[old]
            account.day, account.spent_day = day, 0.0
        if account.month != month:
            account.month, account.spent_month = month, 0.0

    def admit(self, client: str, amount: float) -> Reservation:
        """Rate limit, then reserve ``amount`` USD or raise 429 (check and reserve are one
        synchronous step: nothing else runs between them)."""
        if not 0.0 <= amount < math.inf:  # NaN, negative or infinite: fail closed, never open
            raise ValueError(f"invalid reservation amount {amount!r}")
        account = self.accounts.get(client)
        if account is None:  # removed by a reload since the key was checked
            raise Unauthorized("Invalid API key")
        config = account.config
        self._roll(account, self.wall())
        rate, now = account.rate, self.clock()
        if rate is not None:
            wait = rate.retry_after(now)
            if wait > 0:
                account.rejected += 1
                seconds = max(1, math.ceil(wait))
                raise RateLimited(f"Rate limit of {config.requests_per_minute} requests per "
                                  f"minute reached for client `{client}`; retry in {seconds}s",
                                  headers={"retry-after": str(seconds)})
        for label, limit, spent in (("daily", config.daily_usd, account.spent_day),
                                    ("monthly", config.monthly_usd, account.spent_month)):
            if limit > 0 and spent + account.reserved + amount > limit:
                account.rejected += 1
                raise BudgetExceeded(
                    f"The {label} budget of ${limit:g} for client `{client}` is exhausted "
                    f"(spent ${spent:.4f}, ${account.reserved:.4f} reserved by requests in "
                    f"flight, this request may cost up to ${amount:.4f})")
        if rate is not None:
            rate.add(now)
        reservation = Reservation(client, amount, next(self._ids))
        account.holds[reservation.id] = amount
        account.reserved += amount
        account.requests += 1
        return reservation

    async def reserve(self, client: str, amount: float) -> Reservation:
        """:meth:`admit`, fleet-wide when the state is shared (one atomic step in Redis)."""
        shared = self.shared
        if shared is None:
            return self.admit(client, amount)
        if not 0.0 <= amount < math.inf:
            raise ValueError(f"invalid reservation amount {amount!r}")
        account = self.accounts.get(client)
        if account is None:
            raise Unauthorized("Invalid API key")
        config = account.config
        day, month = budget_period(self.wall())
        hold = f"{shared.replica_id}:{self._boot}:{next(self._ids)}"
        try:
            verdict = await shared.reserve(
                client, hold, amount, daily_usd=config.daily_usd, monthly_usd=config.monthly_usd,
                requests_per_minute=config.requests_per_minute, day=day, month=month,
                hold_ttl_s=self.hold_ttl_s)
        except StateUnavailable:
            # Redis may still have run it (a timeout, not a refusal): cancel that hold for sure
            shared.settle(client, hold, 0.0, day=day, month=month)
            if self.on_unavailable == "closed":
                account.rejected += 1
                raise LimitsUnavailable("Budgets cannot be checked right now (shared state "
                                        "unreachable); retry shortly",
                                        headers={"retry-after": "1"}) from None
            return self.admit(client, amount)  # this replica's own accounting until it is back
        if verdict.outcome == "rate":
            account.rejected += 1
            seconds = max(1, math.ceil(verdict.retry_after_s))
            raise RateLimited(f"Rate limit of {config.requests_per_minute} requests per minute "
                              f"reached for client `{client}`; retry in {seconds}s",
                              headers={"retry-after": str(seconds)})
        if verdict.outcome != "ok":
            account.rejected += 1
            limit = config.daily_usd if verdict.outcome == "daily" else config.monthly_usd
            raise BudgetExceeded(
                f"The {verdict.outcome} budget of ${limit:g} for client `{client}` is exhausted "
                f"(spent ${verdict.spent:.4f}, ${verdict.reserved:.4f} reserved by requests in "
                f"flight, this request may cost up to ${amount:.4f})")
        account.requests += 1
        return Reservation(client, amount, 0, hold, day, month)

    def settle(self, reservation: Reservation, cost: float | None) -> None:
        """Release exactly this reservation and charge the real cost (the reservation when
        unknown). A second settle of the same reservation does nothing."""
        if reservation.hold:
            charged = reservation.amount if cost is None or not math.isfinite(cost) else max(
                0.0, cost)
            if self.shared is not None:
                self.shared.settle(reservation.client, reservation.hold, charged,
                                   day=reservation.day, month=reservation.month)
            return
        account = self.accounts.get(reservation.client)
        if account is None:  # removed by a reload while in flight
            return
        held = account.holds.pop(reservation.id, None)
        if held is None:  # settled already, or the client was removed and re-added
            return
        # the sum of what is still held, exactly 0 once nothing is: no float drift, no clamp
        account.reserved = account.reserved - held if account.holds else 0.0
        self._roll(account, self.wall())
        charged = held if cost is None or not math.isfinite(cost) else max(0.0, cost)
        account.spent_day += charged
        account.spent_month += charged
        shared = self.shared
        if shared is not None:  # admitted while Redis was down: its spend counts there too
            day, month = budget_period(self.wall())
            shared.settle(reservation.client, f"{shared.replica_id}:{self._boot}:local:{reservation.id}",
                          charged, day=day, month=month)

    def stats(self) -> dict[str, dict[str, float | int]]:
        now = self.wall()
        out: dict[str, dict[str, float | int]] = {}
        for name, account in self.accounts.items():
            self._roll(account, now)
            c = account.config
            out[name] = {"spent_today_usd": round(account.spent_day, 8),
                         "spent_month_usd": round(account.spent_month, 8),
                         "reserved_usd": round(account.reserved, 8),
                         "daily_usd": c.daily_usd, "monthly_usd": c.monthly_usd,
                         "requests_per_minute": c.requests_per_minute,
                         "requests": account.requests, "rejected": account.rejected,
                         "in_flight": len(account.holds)}
        return out


def budget_period(now: float) -> tuple[str, str]:
    """The UTC day and month budgets count in."""
    t = time.gmtime(now)
    return time.strftime("%Y-%m-%d", t), time.strftime("%Y-%m", t)
