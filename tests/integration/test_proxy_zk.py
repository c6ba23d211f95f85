"""The proxy reading its entry replicas from a real ZooKeeper (v1 layout, `--discovery zk`, agent.conf)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from kazoo.client import KazooClient
from proxy_procs import FakeEntry, Proxy
from zk_harness import ZooKeeperServer

from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.core.zk_paths import ReplicaPath, ServerType
from monolith_serving.discovery.replica_meta import ReplicaMeta
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

pytestmark = pytest.mark.integration

AVAILABLE, LOADING = 30, 20


def _predict(address: str, model: str = "entry") -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(to_tensor_proto(np.array([1.0], np.float32)))
    with grpc.insecure_channel(address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)


def _eventually(check: object, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check()  # type: ignore[operator]
            return
        except (AssertionError, grpc.RpcError):  # not yet: the watch event is still on its way
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_routes_to_available_replicas_registered_in_zookeeper(zk_server: ZooKeeperServer, tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text(
        f"bzid proxytest\nbase_name rank\nbase_path {tmp_path}\ndeploy_type entry\nzk_servers {zk_server.hosts}\n"
    )
    zk = KazooClient(hosts=zk_server.hosts, timeout=10)
    zk.start(timeout=10)
    path = ReplicaPath("proxytest", "rank", ServerType.ENTRY, 0, 1).path
    with FakeEntry("zk-a", tmp_path) as fake:
        meta = ReplicaMeta(address=fake.address, stat=LOADING, model_name="entry", server_type="entry", task=0)
        zk.create(path, meta.to_json(), makepath=True, ephemeral=True)
        with Proxy(tmp_path, ["--conf", str(conf)]) as proxy:  # discovery zk comes from agent.conf
            with pytest.raises(grpc.RpcError) as caught:
                _predict(proxy.address)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE and "'entry'" in caught.value.details()
            with pytest.raises(grpc.RpcError) as caught:
                _predict(proxy.address, model="ghost")
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND

            zk.set(path, ReplicaMeta(**{**meta.__dict__, "stat": AVAILABLE}).to_json())

            def routed() -> None:
                response = _predict(proxy.address)
                assert bytes(from_tensor_proto(response.outputs["replica"])[0]) == b"zk-a"

            _eventually(routed)
            # The last replica leaves the registry: the model is between replicas, not unknown. NOT_FOUND would tell
            # clients not to retry; UNAVAILABLE is retried. A name never registered stays NOT_FOUND.
            zk.delete(path)

            def gone() -> None:
                try:
                    _predict(proxy.address)
                except grpc.RpcError as error:
                    assert error.code() is grpc.StatusCode.UNAVAILABLE, error
                    assert "'entry' has no AVAILABLE replica right now" in error.details()
                else:
                    raise AssertionError("still routed after the replica left the registry")

            _eventually(gone)
            with pytest.raises(grpc.RpcError) as caught:
                _predict(proxy.address, model="ghost")
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    zk.stop()
    zk.close()
