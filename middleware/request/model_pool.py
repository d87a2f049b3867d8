"""A pool model as the relay calls it: its config, provider, adapter, and what it costs."""

from __future__ import annotations

from dataclasses import dataclass, field

from routegate.middleware.config import ModelConfig, ProviderConfig
from routegate.middleware.contracts import Usage
from routegate.middleware.providers.base import ProviderAdapter

__all__ = ["PoolModel", "cost_usd"]


@dataclass(frozen=True, slots=True)
class PoolModel:
    """A pool model with everything needed to call it."""

    name: str
    config: ModelConfig
    provider_name: str
    provider: ProviderConfig
    adapter: ProviderAdapter
    upstream_model: str
    # this model's x-routegate-model / -provider response headers, encoded once
    identity_headers: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "identity_headers", (
            (b"x-routegate-model", self.name.encode()),
            (b"x-routegate-provider", self.provider_name.encode())))


def cost_usd(model: ModelConfig, usage: Usage | None) -> float | None:
    if usage is None:
        return None
    return (usage.prompt_tokens * model.input_usd_per_mtok
            + usage.completion_tokens * model.output_usd_per_mtok) / 1_000_000
