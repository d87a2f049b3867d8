"""Minimal OTLP receivers on 127.0.0.1 (gRPC and HTTP/protobuf) that keep what they decode."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc  # type: ignore[import-untyped]  # no stubs: grpcio ships none
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass
class Received:
    """Everything a receiver decoded, plus the request metadata it saw (thread-safe)."""

    traces: list[trace_pb.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_pb.ExportMetricsServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """(resource attributes, span) for every span received."""
        with self.lock:
            out: list[tuple[dict[str, Any], Span]] = []
            for request in self.traces:
                for resource_spans in request.resource_spans:
                    resource = {kv.key: value(kv.value)
                                for kv in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        out.extend((resource, span) for span in scope_spans.spans)
            return out

    def metric_names(self) -> set[str]:
        with self.lock:
            return {metric.name for request in self.metrics
                    for resource_metrics in request.resource_metrics
                    for scope_metrics in resource_metrics.scope_metrics
                    for metric in scope_metrics.metrics}


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value(v) for v in any_value.array_value.values)
    return None if kind is None else getattr(any_value, kind)


def span_attributes(span: Span) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in span.attributes}


class _TraceService(trace_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    def Export(self, request: trace_pb.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_pb.ExportTraceServiceResponse:
        with self._received.lock:
            self._received.traces.append(request)
            self._received.headers.append(dict(context.invocation_metadata()))
        return trace_pb.ExportTraceServiceResponse()


class _MetricsService(metrics_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self._received = received

    def Export(self, request: metrics_pb.ExportMetricsServiceRequest,
               context: grpc.ServicerContext) -> metrics_pb.ExportMetricsServiceResponse:
        with self._received.lock:
            self._received.metrics.append(request)
        return metrics_pb.ExportMetricsServiceResponse()


@contextmanager
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/gRPC receiver; yields (``http://127.0.0.1:port``, what it received)."""
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    # The generated *_pb2_grpc modules are untyped.
    trace_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _TraceService(received), server)
    metrics_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _MetricsService(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(grace=None)


@contextmanager
def http_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP (protobuf) receiver for /v1/traces and /v1/metrics."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            response: bytes
            with received.lock:
                received.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path == "/v1/traces":
                    received.traces.append(trace_pb.ExportTraceServiceRequest.FromString(body))
                    response = trace_pb.ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    received.metrics.append(
                        metrics_pb.ExportMetricsServiceRequest.FromString(body))
                    response = metrics_pb.ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(response)))
            self.end_headers()
            self.wfile.write(response)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
