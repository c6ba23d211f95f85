"""AgentService gRPC servicer (REFERENCE section 8): translates protobuf and reads a ``ReplicaView``.

Reusable: the agent serves it over its own watcher view on ``agent_port``; the replica-manager over its
cluster-wide view. HeartBeatRequest has no model field, so a caller of a multi-model view may name the
model in the ``model_name`` request metadata (otherwise the view's default model is used).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.zk_paths import ServerType
from monolith_serving.discovery.agent_view import ReplicaView, ResourceSample
from monolith_serving.proto_gen.monolith.agent_service import agent_service_pb2, agent_service_pb2_grpc

__all__ = [
    "MODEL_NAME_METADATA",
    "AgentServiceServicer",
    "add_agent_service",
    "int32_of",
    "server_type_from_proto",
]

MODEL_NAME_METADATA = "model_name"

_SERVER_TYPES: dict[int, ServerType] = {
    int(agent_service_pb2.PS): ServerType.PS,
    int(agent_service_pb2.ENTRY): ServerType.ENTRY,
    int(agent_service_pb2.DENSE): ServerType.DENSE,
}


def server_type_from_proto(value: int) -> ServerType:
    try:
        return _SERVER_TYPES[value]
    except KeyError:
        raise InvalidArgumentError(f"unknown server_type {value}") from None


def int32_of(value: int) -> int:
    """``value`` in an int32 field as a reader decodes it when the whole value is sent (protobuf: the low 32 bits,
    two's complement). GetResource's replica_id is an int32, but a replica id derived from a pod name takes 40 bits
    (Monolith's own servicer fails the call on such an id); an id that fits is unchanged."""
    return (value + 2**31) % 2**32 - 2**31


def _model_from_metadata(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == MODEL_NAME_METADATA:
            return value if isinstance(value, str) else value.decode()
    return ""


class AgentServiceServicer(agent_service_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    """Stateless translation layer; thread-safety is that of ``view`` (call from its loop)."""

    def __init__(self, view: ReplicaView, resource: Callable[[], ResourceSample]) -> None:
        self._view = view
        self._resource = resource

    async def GetReplicas(
        self, request: agent_service_pb2.GetReplicasRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.GetReplicasResponse:
        if request.task < 0:
            raise InvalidArgumentError(f"task must be >= 0, got {request.task}")
        server_type = server_type_from_proto(request.server_type)
        addresses = self._view.get_replicas(server_type, request.task, request.model_name)
        response = agent_service_pb2.GetReplicasResponse()
        response.address_list.address.extend(addresses)
        return response

    async def HeartBeat(
        self, request: agent_service_pb2.HeartBeatRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.HeartBeatResponse:
        view = self._view.heartbeat(server_type_from_proto(request.server_type), _model_from_metadata(context))
        response = agent_service_pb2.HeartBeatResponse()
        for key, addresses in view.items():
            response.addresses[key].address.extend(addresses)
        return response

    async def GetResource(
        self, request: agent_service_pb2.GetResourceRequest, context: grpc.aio.ServicerContext
    ) -> agent_service_pb2.GetResourceResponse:
        sample = self._resource()
        return agent_service_pb2.GetResourceResponse(
            address=sample.address,
            shard_id=sample.shard_id,
            replica_id=int32_of(sample.replica_id),
            memory=sample.memory_bytes,
            cpu=sample.cpu,
            network=sample.network,
            work_load=sample.work_load,
        )


def add_agent_service(servicer: AgentServiceServicer) -> Callable[[grpc.aio.Server], None]:
    """For ``core.grpc_server.build_server(options, [add_agent_service(servicer), ...])``."""

    def add(server: grpc.aio.Server) -> None:
        agent_service_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

    return add
