"""Health follows the drain (tracerd._server._Stall): a wedged hub stops saying SERVING."""

from __future__ import annotations

import time
from typing import Any

from grpc_health.v1 import health_pb2

from tracerd._server import _Stall


class _Hub:
    drains = 0


class _Health:
    def __init__(self) -> None:
        self.status: dict[str, Any] = {}

    def set(self, name: str, status: Any) -> None:
        self.status[name] = status


def test_health_is_not_serving_while_no_drain_completes() -> None:
    hub, health = _Hub(), _Health()
    stall = _Stall(hub, health)  # type: ignore[arg-type]
    stall.STALL_S = 0.05
    hub.drains += 1
    stall.check()
    assert health.status == {}  # progress: nothing to change
    time.sleep(0.1)
    stall.check()
    assert set(health.status.values()) == {health_pb2.HealthCheckResponse.NOT_SERVING}
    assert len(health.status) == 2  # the server as a whole and the Tracer service
    hub.drains += 1
    stall.check()
    assert set(health.status.values()) == {health_pb2.HealthCheckResponse.SERVING}
