"""Provider adapters, one per wire format, behind the ProviderAdapter protocol."""

from routegate.middleware.config import ProviderConfig
from routegate.middleware.providers.base import ProviderAdapter
from routegate.middleware.providers.openai import OpenAIAdapter

__all__ = ["ProviderAdapter", "build_adapter"]


def build_adapter(provider: ProviderConfig, api_key: str | None) -> ProviderAdapter:
    """The adapter for a provider's wire format (``local`` speaks OpenAI's)."""
    return OpenAIAdapter(provider, api_key)
