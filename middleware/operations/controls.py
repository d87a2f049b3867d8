"""Operator state: manual weights and pins per model and category, disabled models
(set through the admin API; shared across replicas by ``middleware/state/operator_sync.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from routegate.middleware.request.routing import Override

__all__ = ["Controls"]

Clock = Callable[[], float]


class Controls:
    """Operator state: manual weights and pins per (model, category or ``*``), disabled models.
    Expiries are unix times (they survive a process clock reset only as far as the wall does)."""

    def __init__(self, wall: Clock = time.time) -> None:
        self.wall = wall
        self.overrides: dict[tuple[str, str], Override] = {}
        self.disabled: set[str] = set()

    def set(self, model: str, category: str, override: Override) -> None:
        self.overrides[(model, category)] = override

    def change(self, model: str, category: str, override: Override | None) -> None:
        """Set ``override``, or clear it with None (one change, as the fleet sends it)."""
        if override is None:
            self.clear(model, category)
        else:
            self.set(model, category, override)

    def replace(self, overrides: dict[tuple[str, str], Override],
                disabled: Iterable[str]) -> None:
        """Adopt a whole snapshot (the fleet's, at a resync); expired overrides stay out."""
        now = self.wall()
        self.overrides = {key: o for key, o in overrides.items()
                          if o.expires_at is None or o.expires_at > now}
        self.disabled.clear()
        self.disabled.update(disabled)

    def clear(self, model: str, category: str) -> bool:
        return self.overrides.pop((model, category), None) is not None

    def lookup(self, model: str, category: str | None, now: float) -> Override | None:
        if not self.overrides:  # the usual case, asked for every candidate of every request
            return None
        for key in ((model, category or "*"), (model, "*")):
            override = self.overrides.get(key)
            if override is not None:
                if override.expires_at is not None and override.expires_at <= now:
                    del self.overrides[key]  # expired: gone for good
                    continue
                return override
        return None

    def active(self) -> dict[tuple[str, str], Override]:
        now = self.wall()
        for model, category in list(self.overrides):
            self.lookup(model, category, now)
        return dict(self.overrides)
