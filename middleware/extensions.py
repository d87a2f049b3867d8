"""Which extensions a config switches on, in start order (one line per feature)."""

from __future__ import annotations

from routegate.middleware.config import GatewayConfig
from routegate.middleware.request.gateway import GatewayExtension

__all__ = ["default_extensions"]


def default_extensions(config: GatewayConfig) -> list[GatewayExtension]:
    extensions: list[GatewayExtension] = []
    if config.classifier.mode == "sidecar":  # first: the classifier the others will use
        from routegate.sidecar.extension import SidecarExtension
        from routegate.sidecar.routes import route_specs
        extensions.append(SidecarExtension(
            config.classifier, categories=config.categories,
            routes=route_specs(config.routes, config.categories)))
    from routegate.otel import TelemetryExtension  # off (no observer) unless an endpoint is set
    extensions.append(TelemetryExtension(config.telemetry))
    from routegate.middleware.request.ingress_anthropic import AnthropicIngress  # {prefix}/messages
    extensions.append(AnthropicIngress())
    from routegate.middleware.request.route_only import RouteOnly  # {prefix}/route: decide only
    extensions.append(RouteOnly())
    # health, budgets, feedback, /admin
    from routegate.middleware.operations.adaptive import AdaptiveExtension
    extensions.append(AdaptiveExtension())
    return extensions
