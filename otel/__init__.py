"""routegate.otel: OpenTelemetry tracing and metrics for the gateway."""
