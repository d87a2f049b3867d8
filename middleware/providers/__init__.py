"""Provider adapters, one per wire format, behind the ProviderAdapter protocol."""

from collections.abc import Callable

from routegate.middleware.config import ProviderConfig
from routegate.middleware.providers.anthropic import AnthropicAdapter
from routegate.middleware.providers.base import ProviderAdapter
from routegate.middleware.providers.gemini import GeminiAdapter
from routegate.middleware.providers.openai import OpenAIAdapter

__all__ = ["ProviderAdapter", "build_adapter"]


def build_adapter(provider: ProviderConfig, api_key: str | None,
                  scrub: Callable[[bytes], bytes] | None = None) -> ProviderAdapter:
    """The adapter for a provider's wire format (``local`` speaks OpenAI's). ``scrub``
    redacts secrets from the in-stream error events an OpenAI-format stream relays as they
    came (the other formats turn theirs into failures, which the relay scrubs)."""
    if provider.type == "anthropic":
        return AnthropicAdapter(provider, api_key)
    if provider.type == "gemini":
        return GeminiAdapter(provider, api_key)
    return OpenAIAdapter(provider, api_key, scrub)
