"""The admin API's fleet side (``[state] backend = "redis"``): operator changes that go to every
replica (``middleware/state/operator_sync.py``) and ``/admin/stats``' ``fleet`` section."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from routegate.middleware.contracts import SharedState, StateUnavailable
from routegate.middleware.operations.budgets import ClientLimiter, budget_period
from routegate.middleware.operations.feedback import SharedStateDown
from routegate.middleware.operations.model_health import Controls
from routegate.middleware.request.routing import Override

__all__ = ["FleetControls", "apply_change", "fleet_stats"]


class FleetControls(Protocol):
    """Operator state shared by the fleet (``middleware/state/operator_sync.py``)."""

    async def change(self, overrides: dict[tuple[str, str], Override | None],
                     disabled: dict[str, bool]) -> None: ...
    async def reloaded(self, allow_shrink: bool) -> int: ...


async def apply_change(controls: Controls, fleet: FleetControls | None,
                       overrides: dict[tuple[str, str], Override | None],
                       disabled: dict[str, bool]) -> None:
    """Apply an operator change (None clears an override): here, or with a fleet in Redis first
    and then everywhere; while Redis does not answer, 503 and nothing changed anywhere."""
    if fleet is not None:
        try:
            await fleet.change(overrides, disabled)
        except StateUnavailable:
            raise SharedStateDown(
                "Operator changes go to every replica through the shared state (Redis), which "
                "is unavailable: nothing was changed; retry when it is back") from None
        return
    for (model, category), override in overrides.items():
        controls.change(model, category, override)
    for model, off in disabled.items():
        if off:
            controls.disabled.add(model)
        else:
            controls.disabled.discard(model)


async def fleet_stats(shared: SharedState, limiter: ClientLimiter, now: float) -> dict[str, Any]:
    """The fleet as Redis knows it: every replica (alive or not, with its last heartbeat), the
    alive ones' numbers summed, and the clients' fleet-wide spend; ``available: false`` (and
    this replica's own numbers above) while it is down."""
    try:
        replicas = await shared.replicas()
        clients = await shared.client_totals(sorted(limiter.accounts), *budget_period(now))
    except StateUnavailable:
        return {"available": False, "replica": shared.replica_id}
    alive = sorted(name for name, info in replicas.items() if info["alive"])
    return {"available": True, "replica": shared.replica_id, "replicas": replicas,
            "alive": alive, "summed": _summed(replicas[name] for name in alive),
            "clients": clients}


def _summed(beats: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The alive replicas' heartbeat numbers added up (``requests`` per model)."""
    requests: dict[str, int] = {}
    feedback = 0
    for beat in beats:
        for model, count in beat.get("requests", {}).items():
            requests[model] = requests.get(model, 0) + int(count)
        feedback += int(beat.get("feedback_received", 0))
    return {"requests": requests, "requests_total": sum(requests.values()),
            "feedback_received": feedback}
