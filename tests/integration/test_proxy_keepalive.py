"""The proxy's channels to entry replicas find a stopped replica dead by HTTP/2 keepalive.

A replica whose process is stopped (SIGSTOP, a frozen VM) or whose host vanished sends no RST and no FIN: without
keepalive a call to it ran to its deadline, and the dead connection stayed in the pool. A stand-in entry process
(proxy_fake_entry.py) is stopped under a call made through a real UpstreamPool with short keepalive settings.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from proxy_procs import FakeEntry

from monolith_serving.core.serving_call import PREDICT, RpcStatusError
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2
from monolith_serving.proxy.upstream import UpstreamPool

pytestmark = pytest.mark.integration


def _predict() -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "entry"
    request.inputs["x"].CopyFrom(to_tensor_proto(np.array([1.0], np.float32)))
    return request.SerializeToString()


def test_a_call_to_a_stopped_replica_fails_unavailable_within_the_keepalive(tmp_path: Path) -> None:
    async def scenario(entry: FakeEntry) -> float:
        pool = UpstreamPool(keepalive_time_ms=500, keepalive_timeout_ms=500)
        try:
            await pool.call(entry.address, PREDICT, _predict(), timeout_s=10.0, metadata=())  # connected
            assert entry.process is not None
            os.kill(entry.process.pid, signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(RpcStatusError) as caught:
                await pool.call(entry.address, PREDICT, _predict(), timeout_s=30.0, metadata=())
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE, caught.value.message
            return time.monotonic() - started
        finally:
            await pool.close()

    with FakeEntry("stopped", tmp_path) as entry:
        assert entry.process is not None
        try:
            elapsed_s = asyncio.run(scenario(entry))
        finally:
            os.kill(entry.process.pid, signal.SIGCONT)
    # ~1 s (a ping after 0.5 s quiet, 0.5 s without its ack); without keepalive, the whole 30 s deadline.
    assert elapsed_s < 10, elapsed_s
