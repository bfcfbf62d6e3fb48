"""A real OTLP/gRPC receiver for tests: a grpc server on 127.0.0.1 implementing the
collector's published trace and metrics services (opentelemetry-proto), keeping every
request it gets, so tests assert on exactly what a collector would receive."""

from __future__ import annotations

import threading
from collections.abc import Generator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class Receiver:
    """What a collector received: the requests, in order, and their gRPC metadata."""

    port: int
    traces: list[Any] = field(default_factory=list)
    metrics: list[Any] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def spans(self) -> list[tuple[Any, Any, Any]]:
        """(resource, scope, span) for every span received."""
        return [(rs.resource, ss.scope, span) for req in self.traces
                for rs in req.resource_spans for ss in rs.scope_spans for span in ss.spans]

    def wait_metrics(self, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: bool(self.metrics), timeout_s)


class _TraceSink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, rx: Receiver) -> None:
        self.rx = rx

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rx.cond:
            self.rx.traces.append(request)
            self.rx.metadata.append(dict(context.invocation_metadata()))  # type: ignore[arg-type]
            self.rx.cond.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricSink(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, rx: Receiver) -> None:
        self.rx = rx

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.rx.cond:
            self.rx.metrics.append(request)
            self.rx.metadata.append(dict(context.invocation_metadata()))  # type: ignore[arg-type]
            self.rx.cond.notify_all()
        return metrics_service_pb2.ExportMetricsServiceResponse()


def serve_receiver(creds: grpc.ServerCredentials | None = None) -> Generator[Receiver, None, None]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    if creds is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", creds)
    assert port
    rx = Receiver(port=port)
    # The generated *_grpc modules are unannotated.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _TraceSink(rx), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _MetricSink(rx), server)
    server.start()
    try:
        yield rx
    finally:
        server.stop(grace=None)
