"""Which extensions a config switches on, in start order (one line per feature)."""

from __future__ import annotations

from routegate.middleware.config import GatewayConfig
from routegate.middleware.gateway import Extension

__all__ = ["default_extensions"]


def default_extensions(config: GatewayConfig) -> list[Extension]:
    extensions: list[Extension] = []
    if config.classifier.mode == "sidecar":  # first: the classifier the others will use
        from routegate.sidecar.extension import SidecarExtension
        extensions.append(SidecarExtension(config.classifier))
    from routegate.otel import TelemetryExtension  # off (no observer) unless an endpoint is set
    extensions.append(TelemetryExtension(config.telemetry))
    from routegate.middleware.ingress_anthropic import AnthropicIngress  # POST {prefix}/messages
    extensions.append(AnthropicIngress())
    from routegate.middleware.adaptive import AdaptiveExtension  # health, budgets, feedback, /admin
    extensions.append(AdaptiveExtension())
    return extensions
