"""The telemetry observer: spans and metrics from the relay's fixed observation points.

One request becomes one trace fragment::

    SERVER  chat {requested model}         arrival .. last byte; joins the caller's traceparent
      ├─ INTERNAL routegate.classify       only for ``auto`` (times from the classifier call)
      ├─ CLIENT   chat {upstream model}    attempt 1 (failed: error.type, status ERROR)
      └─ CLIENT   chat {upstream model}    attempt 2, a fallback; ends when its stream ends

The relay records times with ``time.perf_counter()``; they become epoch nanoseconds through
one offset taken when the observer is built, so every span of a trace is on the same clock.
Where attributes go: the server span names the request (requested model, chosen pool
model, category, attempts, cost, time to first token, outcome); each CLIENT span carries the
GenAI call itself (provider, upstream model, response model, tokens, finish reasons, cost,
error.type); the classify span the classifier's method, confidence and latency.

Metrics go to a :class:`~routegate.otel.sinks.MetricSink` with fixed label names per family
(the ``_*_LABELS`` tuples below; the Grafana dashboard is tested against them).

Privacy: request text goes on spans only with ``capture_content`` (completion text is not
available to observers); headers are never copied (the upstream request carries the provider
key, so only ``traceparent`` is written to it and nothing is read from it).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

import routegate.otel.attributes as a
from routegate.middleware.contracts import AttemptInfo, RequestContext, RequestOutcome
from routegate.otel.sinks import MetricSink

__all__ = ["TelemetryObserver"]

_STATE_KEY = "routegate.otel"
# Metric label names, fixed per series family (values are passed as tuples).
_CALL_LABELS = (a.GEN_AI_OPERATION_NAME, a.GEN_AI_PROVIDER_NAME, a.GEN_AI_REQUEST_MODEL,
                a.RG_MODEL)
_CALL_ERROR_LABELS = (*_CALL_LABELS, a.ERROR_TYPE)
_COST_LABELS = (a.RG_MODEL, a.GEN_AI_PROVIDER_NAME)
_REQUEST_LABELS = (a.RG_MODEL, a.RG_CATEGORY, a.RG_OUTCOME, a.RG_FALLBACK)
_TTFT_LABELS = (a.RG_MODEL, a.GEN_AI_REQUEST_STREAM)
_CLASSIFIER_LABELS = (a.RG_CLASSIFIER_METHOD,)
_propagator = TraceContextTextMapPropagator()


class _RequestSpans:
    __slots__ = ("attempts", "context", "recording", "server")

    def __init__(self, server: trace.Span, context: Context) -> None:
        self.server = server
        self.context = context  # the server span as parent of the child spans
        self.attempts: dict[int, trace.Span] = {}
        # A trace the sampler dropped gets no child spans and no attributes, only metrics.
        self.recording = server.is_recording()


class TelemetryObserver:
    """An :class:`~routegate.middleware.request.observers.Observer` that emits GenAI spans and metrics."""

    def __init__(self, tracer: trace.Tracer, sink: MetricSink, *,
                 capture_content: bool = False) -> None:
        self._tracer = tracer
        self._sink = sink
        self._capture_content = capture_content
        # perf_counter seconds -> epoch ns; one offset so spans of a trace share a clock.
        self._offset_ns = time.time_ns() - time.perf_counter_ns()
        self._servers: dict[str, dict[str, AttributeValue]] = {}  # provider -> server.*

    def _ns(self, perf_s: float) -> int:
        return int(perf_s * 1e9) + self._offset_ns

    # -- Observer ---------------------------------------------------------------------------
    def on_request(self, ctx: RequestContext) -> None:
        parent = _propagator.extract(ctx.headers) if "traceparent" in ctx.headers else None
        server = self._tracer.start_span(
            ctx.path, context=parent, kind=SpanKind.SERVER, start_time=self._ns(ctx.started_at),
            attributes={a.RG_REQUEST_ID: ctx.request_id})
        span_context = server.get_span_context()
        ctx.state[_STATE_KEY] = _RequestSpans(server, trace.set_span_in_context(server))
        if span_context.is_valid:
            trace_id = trace.format_trace_id(span_context.trace_id)
            ctx.response_headers.append((b"x-trace-id", trace_id.encode()))
            # W3C Trace Context level 2: the trace this response belongs to, and whether it
            # was sampled (a trace ID that was not sampled is in no backend).
            ctx.response_headers.append((b"traceresponse", (
                f"00-{trace_id}-{trace.format_span_id(span_context.span_id)}-"
                f"{int(span_context.trace_flags):02x}").encode()))

    def on_classified(self, ctx: RequestContext) -> None:
        spans: _RequestSpans | None = ctx.state.get(_STATE_KEY)
        found = ctx.classification
        if spans is None or found is None:
            return
        attrs: dict[str, AttributeValue] = {
            a.RG_CATEGORY: found.category,
            a.RG_CLASSIFIER_CONFIDENCE: found.confidence,
            a.RG_CLASSIFIER_METHOD: found.method,
            a.RG_CLASSIFIER_LATENCY_MS: found.latency_ms,
            a.RG_CLASSIFIER_COMPLEXITY: found.complexity,
        }
        started = ctx.classify_started_at
        ended = ctx.classify_ended_at
        if started is None or ended is None:
            return
        self._sink.record(a.METRIC_CLASSIFIER_DURATION, ended - started, _CLASSIFIER_LABELS,
                          (found.method,))
        if spans.recording:
            # The classification details live on their own span; the server span gets the
            # category (every attribute is paid for again when the batch is encoded).
            spans.server.set_attribute(a.RG_CATEGORY, found.category)
            span = self._tracer.start_span(a.CLASSIFY_SPAN, context=spans.context,
                                           start_time=self._ns(started), attributes=attrs)
            span.end(end_time=self._ns(ended))

    def on_attempt_start(self, ctx: RequestContext, attempt: AttemptInfo,
                         request: httpx.Request) -> None:
        spans: _RequestSpans | None = ctx.state.get(_STATE_KEY)
        if spans is None:
            return
        if not spans.recording:  # upstream joins the (unsampled) trace through the server span
            _inject(request, spans.server.get_span_context())
            return
        attrs: dict[str, AttributeValue] = {
            a.GEN_AI_OPERATION_NAME: a.OPERATION_CHAT,
            a.GEN_AI_PROVIDER_NAME: _provider_name(attempt.provider_type),
            a.GEN_AI_REQUEST_MODEL: attempt.upstream_model,
            a.RG_MODEL: attempt.model,
        }
        server = self._servers.get(attempt.provider)
        if server is None:  # a provider's base URL is fixed: parse it once
            url = request.url
            server = self._servers[attempt.provider] = (
                {a.SERVER_ADDRESS: url.host} if url.port is None
                else {a.SERVER_ADDRESS: url.host, a.SERVER_PORT: url.port})
        attrs.update(server)
        if attempt.index > 0:
            previous = ctx.attempts[attempt.index - 1]
            attrs[a.RG_ATTEMPT_INDEX] = attempt.index  # absent: the first attempt
            attrs[a.RG_FALLBACK] = True
            spans.server.add_event(a.RG_FALLBACK_EVENT, {
                a.RG_FALLBACK_FROM: previous.model, a.RG_MODEL: attempt.model,
                a.RG_ATTEMPT_INDEX: attempt.index,
                a.RG_FALLBACK_REASON: _error_type(previous) or "unknown",
            }, timestamp=self._ns(attempt.started_at))
        if self._capture_content:
            # A bytes body (adapters leave it unread: nobody else needs a copy) is read here;
            # a streamed upstream body cannot be, so it is left out.
            stream = request.stream
            messages = (_input_messages(request.read()) if isinstance(stream, httpx.ByteStream)
                        else None)
            if messages is not None:
                attrs[a.GEN_AI_INPUT_MESSAGES] = messages
        span = self._tracer.start_span(f"chat {attempt.upstream_model}", context=spans.context,
                                       kind=SpanKind.CLIENT,
                                       start_time=self._ns(attempt.started_at), attributes=attrs)
        spans.attempts[attempt.index] = span
        _inject(request, span.get_span_context())

    def on_attempt_end(self, ctx: RequestContext, attempt: AttemptInfo) -> None:
        spans: _RequestSpans | None = ctx.state.get(_STATE_KEY)
        if spans is None:
            return
        span = spans.attempts.pop(attempt.index, None)
        provider = _provider_name(attempt.provider_type)
        names: tuple[str, ...] = _CALL_LABELS
        values: tuple[AttributeValue, ...] = (a.OPERATION_CHAT, provider, attempt.upstream_model,
                                              attempt.model)
        attrs: dict[str, AttributeValue] = {}
        if attempt.response_model:
            attrs[a.GEN_AI_RESPONSE_MODEL] = attempt.response_model
        if attempt.finish_reasons:
            attrs[a.GEN_AI_RESPONSE_FINISH_REASONS] = attempt.finish_reasons
        if attempt.cost_usd is not None:
            attrs[a.RG_COST_USD] = attempt.cost_usd
        ttft = attempt.ttft_s
        if ttft is not None:
            attrs[a.RG_TTFT_S] = ttft
        if attempt.client_disconnected:
            attrs[a.RG_CLIENT_DISCONNECTED] = True
        error_type = _error_type(attempt)
        if error_type is not None:
            attrs[a.ERROR_TYPE] = error_type
            names, values = _CALL_ERROR_LABELS, (*values, error_type)
            if span is not None:
                detail = (attempt.failure.detail if attempt.failure is not None
                          else attempt.error_after_first_byte or error_type)
                span.set_status(Status(StatusCode.ERROR, detail[:200]))
        usage = attempt.usage
        if usage is not None:
            attrs[a.GEN_AI_USAGE_INPUT_TOKENS] = usage.prompt_tokens
            attrs[a.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.completion_tokens
            if attempt.usage_estimated:
                attrs[a.RG_USAGE_ESTIMATED] = True
        if attempt.continuation_of is not None:
            attrs[a.RG_CONTINUATION_OF] = attempt.continuation_of
        if span is not None:
            span.set_attributes(attrs)
            span.end(end_time=self._ns(attempt.ended_at or time.perf_counter()))

        sink = self._sink
        sink.record(a.METRIC_OPERATION_DURATION,
                    max(0.0, (attempt.ended_at or time.perf_counter()) - attempt.started_at),
                    names, values)
        if usage is not None:
            token_names = (*names, a.GEN_AI_TOKEN_TYPE)
            sink.record(a.METRIC_TOKEN_USAGE, usage.prompt_tokens, token_names, (*values, "input"))
            sink.record(a.METRIC_TOKEN_USAGE, usage.completion_tokens, token_names,
                        (*values, "output"))
        if ttft is not None and ctx.stream:
            sink.record(a.METRIC_TIME_TO_FIRST_CHUNK, ttft, names, values)
        if attempt.cost_usd:
            sink.add(a.METRIC_COST, attempt.cost_usd, _COST_LABELS, (attempt.model, provider))

    def on_request_end(self, ctx: RequestContext, outcome: RequestOutcome) -> None:
        spans: _RequestSpans | None = ctx.state.pop(_STATE_KEY, None)
        if spans is None:
            return
        now = time.perf_counter()
        for span in spans.attempts.values():  # an attempt the relay never closed
            span.set_status(Status(StatusCode.ERROR, "attempt not finished"))
            span.end(end_time=self._ns(now))
        server = spans.server
        attrs: dict[str, AttributeValue] = {
            a.HTTP_RESPONSE_STATUS_CODE: outcome.status,
            a.RG_OUTCOME: outcome.result,
            a.RG_ATTEMPTS: len(ctx.attempts),
        }
        if ctx.requested_model:
            if spans.recording:
                server.update_name(f"chat {ctx.requested_model}")
            attrs[a.GEN_AI_OPERATION_NAME] = a.OPERATION_CHAT
            attrs[a.GEN_AI_REQUEST_MODEL] = ctx.requested_model
            attrs[a.GEN_AI_REQUEST_STREAM] = ctx.stream
        # The answer's model, tokens and finish reasons are on the answering attempt's span;
        # the server span names the chosen pool model (and the request's totals).
        final = _answering_attempt(ctx, outcome)
        if final is not None:
            attrs[a.RG_MODEL] = final.model
        elif outcome.model is not None:  # decided without an attempt (POST {prefix}/route)
            attrs[a.RG_MODEL] = outcome.model
        fallback = False
        if ctx.attempts:
            fallback = any(t.model != ctx.attempts[0].model for t in ctx.attempts)
            if fallback:  # absent: answered (or failed) on the first model
                attrs[a.RG_FALLBACK] = True
            attrs[a.RG_COST_USD] = sum(t.cost_usd or 0.0 for t in ctx.attempts)
        ttft = None
        if final is not None and final.committed and final.first_token_at is not None:
            ttft = final.first_token_at - ctx.started_at
            attrs[a.RG_TTFT_S] = ttft
        if outcome.error_type:
            attrs[a.ERROR_TYPE] = outcome.error_type
        if ctx.recoveries:
            attrs[a.RG_RECOVERIES] = ctx.recoveries
        if spans.recording:
            if outcome.result == "error":
                server.set_status(Status(StatusCode.ERROR, outcome.error_type or "error"))
            server.set_attributes(attrs)
        server.end(end_time=self._ns(now))

        if not ctx.requested_model:
            return  # not a generation (e.g. /v1/models): no GenAI metrics
        model = final.model if final is not None else "none"
        key = (model, ctx.category or "none", outcome.result, fallback)
        self._sink.add(a.METRIC_REQUESTS, 1, _REQUEST_LABELS, key)
        self._sink.record(a.METRIC_REQUEST_DURATION, now - ctx.started_at, _REQUEST_LABELS, key)
        if ttft is not None:
            self._sink.record(a.METRIC_REQUEST_TTFT, ttft, _TTFT_LABELS, (model, ctx.stream))


def _inject(request: httpx.Request, context: trace.SpanContext) -> None:
    """traceparent (and tracestate) on the upstream request; never baggage, which may carry
    user data. Written directly: the propagator's context round trip costs more."""
    if context.is_valid:
        request.headers["traceparent"] = (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}")
        if context.trace_state:
            request.headers["tracestate"] = context.trace_state.to_header()


def _answering_attempt(ctx: RequestContext, outcome: RequestOutcome) -> AttemptInfo | None:
    if outcome.model is None or not ctx.attempts:
        return None
    last = ctx.attempts[-1]
    return last if last.model == outcome.model else None


def _provider_name(provider_type: str) -> str:
    return a.PROVIDER_NAMES.get(provider_type, provider_type)


def _error_type(attempt: AttemptInfo) -> str | None:
    """Low-cardinality: the HTTP status for status failures, else the failure kind."""
    failure = attempt.failure
    if failure is not None:
        if failure.kind == "status" and failure.status is not None:
            return str(failure.status)
        return failure.kind
    if attempt.error_after_first_byte:
        return "stream_interrupted"
    return None


def _input_messages(body: bytes) -> str | None:
    """The request's messages in the GenAI conventions' ``gen_ai.input.messages`` shape."""
    try:
        decoded: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None
    raw = decoded.get("messages") if isinstance(decoded, dict) else None
    if not isinstance(raw, list):
        return None
    out: list[dict[str, Any]] = []
    for message in raw:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            parts.append({"type": "text", "content": content})
        elif isinstance(content, list):
            parts.extend({"type": "text", "content": part.get("text", "")} for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
        out.append({"role": message.get("role", "user"), "parts": parts})
    return json.dumps(out, ensure_ascii=False)
