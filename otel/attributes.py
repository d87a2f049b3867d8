"""Every span, attribute and metric name routegate emits, in one place.

The ``gen_ai.*``, ``error.type`` and ``server.*`` names follow the OpenTelemetry semantic
conventions for generative AI (v1.41 release names: ``gen_ai.provider.name`` rather than the
deprecated ``gen_ai.system``, ``gen_ai.usage.input_tokens`` rather than ``prompt_tokens``).
Names that have no convention are routegate's own, under ``routegate.*``.

Prometheus sees the metrics through the Collector's ``prometheus`` exporter, which replaces
dots with underscores and appends the unit and type suffixes (``s`` -> ``_seconds``, a
counter -> ``_total``, a histogram -> ``_bucket``/``_sum``/``_count``; units in braces add
nothing). :func:`prometheus_name` spells that out so the Grafana dashboard can be checked
against what the gateway really exports.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "CLASSIFIER_BUCKETS_S",
    "CLASSIFY_SPAN",
    "DURATION_BUCKETS_S",
    "ERROR_TYPE",
    "GEN_AI_INPUT_MESSAGES",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_PROVIDER_NAME",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_REQUEST_STREAM",
    "GEN_AI_RESPONSE_FINISH_REASONS",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_TOKEN_TYPE",
    "GEN_AI_USAGE_INPUT_TOKENS",
    "GEN_AI_USAGE_OUTPUT_TOKENS",
    "HTTP_RESPONSE_STATUS_CODE",
    "METRICS",
    "METRIC_CLASSIFIER_DURATION",
    "METRIC_COST",
    "METRIC_OPERATION_DURATION",
    "METRIC_REQUESTS",
    "METRIC_REQUEST_DURATION",
    "METRIC_REQUEST_TTFT",
    "METRIC_TIME_TO_FIRST_CHUNK",
    "METRIC_TOKEN_USAGE",
    "OPERATION_CHAT",
    "PROVIDER_NAMES",
    "RG_ATTEMPTS",
    "RG_ATTEMPT_INDEX",
    "RG_CATEGORY",
    "RG_CLASSIFIER_COMPLEXITY",
    "RG_CLASSIFIER_CONFIDENCE",
    "RG_CLASSIFIER_LATENCY_MS",
    "RG_CLASSIFIER_METHOD",
    "RG_CLIENT_DISCONNECTED",
    "RG_COST_USD",
    "RG_FALLBACK",
    "RG_FALLBACK_EVENT",
    "RG_FALLBACK_FROM",
    "RG_FALLBACK_REASON",
    "RG_MODEL",
    "RG_OUTCOME",
    "RG_PROVIDER",
    "RG_REQUEST_ID",
    "RG_TTFT_S",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "TOKEN_BUCKETS",
    "URL_PATH",
    "MetricKind",
    "MetricSpec",
    "prometheus_name",
]

# -- OpenTelemetry semantic conventions (GenAI, error, server, http) ------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"  # metric attribute: "input" | "output"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"  # only with capture_content
ERROR_TYPE: Final = "error.type"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_PATH: Final = "url.path"

OPERATION_CHAT: Final = "chat"

# gen_ai.provider.name by adapter type; well-known values where the convention has one.
PROVIDER_NAMES: Final[dict[str, str]] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "local": "llama_cpp",
}

# -- routegate's own ---------------------------------------------------------------------------
RG_REQUEST_ID: Final = "routegate.request_id"
RG_CATEGORY: Final = "routegate.category"
RG_CLASSIFIER_CONFIDENCE: Final = "routegate.classifier.confidence"
RG_CLASSIFIER_METHOD: Final = "routegate.classifier.method"
RG_CLASSIFIER_LATENCY_MS: Final = "routegate.classifier.latency_ms"
RG_CLASSIFIER_COMPLEXITY: Final = "routegate.classifier.complexity"
RG_MODEL: Final = "routegate.model"  # the pool model (gateway.toml name) chosen / tried
RG_PROVIDER: Final = "routegate.provider"  # provider name from gateway.toml
RG_ATTEMPTS: Final = "routegate.attempts"  # number of upstream attempts of a request
RG_ATTEMPT_INDEX: Final = "routegate.attempt.index"  # 0-based position of one attempt
RG_COST_USD: Final = "routegate.cost_usd"
RG_TTFT_S: Final = "routegate.ttft_s"  # attempt: from its send; request: from arrival
RG_FALLBACK: Final = "routegate.fallback"  # bool: this attempt/request went past the first model
RG_OUTCOME: Final = "routegate.outcome"  # success | error | client_error | disconnected
RG_CLIENT_DISCONNECTED: Final = "routegate.client_disconnected"
RG_FALLBACK_EVENT: Final = "routegate.fallback"  # span event on the server span
RG_FALLBACK_FROM: Final = "routegate.fallback.from"
RG_FALLBACK_REASON: Final = "routegate.fallback.reason"
RG_USAGE_ESTIMATED: Final = "routegate.usage.estimated"  # tokens counted locally, not reported
RG_CONTINUATION_OF: Final = "routegate.recovery.continuation_of"  # attempt index it continues
RG_RECOVERIES: Final = "routegate.recoveries"  # mid-stream recoveries of a request

CLASSIFY_SPAN: Final = "routegate.classify"

# -- metrics ----------------------------------------------------------------------------------
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
METRIC_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"
METRIC_REQUESTS: Final = "routegate.requests"
METRIC_REQUEST_DURATION: Final = "routegate.request.duration"
METRIC_REQUEST_TTFT: Final = "routegate.request.time_to_first_token"
METRIC_COST: Final = "routegate.cost.usd"
METRIC_CLASSIFIER_DURATION: Final = "routegate.classifier.duration"

# Bucket boundaries the GenAI conventions recommend.
TOKEN_BUCKETS: Final = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
                        262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0)
DURATION_BUCKETS_S: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12,
                             10.24, 20.48, 40.96, 81.92)
CLASSIFIER_BUCKETS_S: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)

MetricKind = Literal["counter", "histogram"]


class MetricSpec:
    """Name, unit, kind and description of one instrument."""

    __slots__ = ("buckets", "description", "kind", "name", "unit")

    def __init__(self, name: str, unit: str, kind: MetricKind, description: str,
                 buckets: tuple[float, ...] | None = None) -> None:
        self.name, self.unit, self.kind = name, unit, kind
        self.description, self.buckets = description, buckets


METRICS: Final[dict[str, MetricSpec]] = {spec.name: spec for spec in (
    MetricSpec(METRIC_TOKEN_USAGE, "{token}", "histogram",
               "Number of input and output tokens used, per upstream call.", TOKEN_BUCKETS),
    MetricSpec(METRIC_OPERATION_DURATION, "s", "histogram",
               "Duration of one upstream GenAI call (an attempt).", DURATION_BUCKETS_S),
    MetricSpec(METRIC_TIME_TO_FIRST_CHUNK, "s", "histogram",
               "Upstream call sent to first streamed chunk received.", DURATION_BUCKETS_S),
    MetricSpec(METRIC_REQUESTS, "{request}", "counter",
               "Gateway requests by chosen model, category and outcome."),
    MetricSpec(METRIC_REQUEST_DURATION, "s", "histogram",
               "Gateway request duration, arrival to last byte.", DURATION_BUCKETS_S),
    MetricSpec(METRIC_REQUEST_TTFT, "s", "histogram",
               "Gateway request arrival to first token relayed to the client.",
               DURATION_BUCKETS_S),
    MetricSpec(METRIC_COST, "{USD}", "counter", "Upstream cost in US dollars."),
    MetricSpec(METRIC_CLASSIFIER_DURATION, "s", "histogram",
               "Time spent classifying a request, by method.", CLASSIFIER_BUCKETS_S),
)}

_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}


def prometheus_name(name: str, unit: str, kind: MetricKind) -> str:
    """The series base name the Collector's Prometheus exporter gives an OTLP metric
    (histograms then add ``_bucket``, ``_sum`` and ``_count``)."""
    base = name.replace(".", "_")
    suffix = "" if unit.startswith("{") else _UNIT_SUFFIX.get(unit, unit)
    if suffix and not base.endswith("_" + suffix):
        base += "_" + suffix
    return base + "_total" if kind == "counter" else base
