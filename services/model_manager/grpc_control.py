"""``ReplicaControl`` over TF Serving's ModelService, with replica addresses from discovery or a static list.

A reload sends a whole ``ModelServerConfig`` holding every sub-model the caller wants at one address: one for
a replica the agent launched, several for a unified container (it unloads whatever the config leaves out).
Every replica's gRPC channel is cached by address; ``retain()`` closes those of addresses no longer listed
(the coordinator's ``observe`` calls it every loop step, so rescheduled pods leave no channel behind) and
``close()`` the rest.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence

import grpc

from monolith_serving.core.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from monolith_serving.core.export_layout import ps_index
from monolith_serving.core.grpc_server import channel_options
from monolith_serving.core.serving_spec import DENSE_SUB_MODEL
from monolith_serving.core.zk_paths import ServerType
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.model_manager.control import (
    LoadConfig,
    Replica,
    ReplicaControl,
    ServerKind,
    VersionState,
    VersionStatus,
)
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)

logger = logging.getLogger(__name__)


class ReplicaList(abc.ABC):
    @abc.abstractmethod
    def replicas(self, model: str) -> list[Replica]: ...


class StaticReplicaList(ReplicaList):
    """Standalone deployments: ``ps_targets[i]`` are the replicas of shard i, ``dense_targets`` those of
    ``dense_0`` (dense_alone models); the same for every model."""

    def __init__(
        self, ps_targets: Sequence[Sequence[str]], entry_targets: Sequence[str], dense_targets: Sequence[str] = ()
    ) -> None:
        found = [Replica(ServerKind.PS, task, a) for task, shard in enumerate(ps_targets) for a in shard]
        found += [Replica(ServerKind.DENSE, 0, a) for a in dense_targets]
        found += [Replica(ServerKind.ENTRY, 0, a) for a in entry_targets]
        self._replicas = sorted(found)

    def replicas(self, model: str) -> list[Replica]:
        return list(self._replicas)


class DiscoveryReplicaList(ReplicaList):
    """Replicas registered in discovery, whatever their state (a LOADING replica needs its config too).

    Agent v1: ``/{bzid}/service/{model}/{ps|dense|entry}:{task}/{replica}`` nodes; v3: bindings of
    ``model:ps_i`` / ``model:dense_0`` / ``model:entry`` joined with container services. A dense server is
    always task 0 (``dense_0``); other dense tasks or sub-graphs are not ours to roll out and are left out.
    """

    def __init__(self, watcher: ReplicaWatcher, *, agent_version: int = 1) -> None:
        self._watcher = watcher
        self._agent_version = agent_version

    def replicas(self, model: str) -> list[Replica]:
        found: set[Replica] = set()
        if self._agent_version == 3:
            for key, addresses in self._watcher.get_all_v3_replicas(model=model).items():
                kind, task = _v3_kind(key.rsplit(":", 1)[-1])
                if kind is None:
                    continue
                found.update(Replica(kind, task, a) for a in addresses)
            return sorted(found)
        for info in self._watcher.replicas():
            if info.path.base_name != model or not info.address:
                continue
            if info.path.server_type is ServerType.PS:
                found.add(Replica(ServerKind.PS, info.path.task, info.address))
            elif info.path.server_type is ServerType.DENSE and info.path.task == 0:
                found.add(Replica(ServerKind.DENSE, 0, info.address))
            elif info.path.server_type is ServerType.ENTRY:
                found.add(Replica(ServerKind.ENTRY, 0, info.address))
        return sorted(found)


def _v3_kind(sub_graph: str) -> tuple[ServerKind | None, int]:
    """The replica kind and task of a v3 sub_graph; ``(None, 0)`` for one the manager does not roll out."""
    if sub_graph == "entry":
        return ServerKind.ENTRY, 0
    if sub_graph == DENSE_SUB_MODEL:
        return ServerKind.DENSE, 0
    task = ps_index(sub_graph)
    return (ServerKind.PS, task) if task is not None else (None, 0)


def reload_request(configs: Sequence[LoadConfig]) -> model_management_pb2.ReloadConfigRequest:
    """One ModelServerConfig with every non-``drop`` config, by served name; none left: an empty model list."""
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.SetInParent()  # an empty list: host no model
    for config in sorted((c for c in configs if not c.drop), key=lambda c: c.served_name):
        model = request.config.model_config_list.config.add(
            name=config.served_name, base_path=config.base_path, model_platform="tensorflow"
        )
        # SetInParent: an empty ``specific`` must still say "specific" (no versions), not fall back to latest.
        model.model_version_policy.specific.SetInParent()
        model.model_version_policy.specific.versions.extend(config.versions)
    return request


def _status_error(address: str, what: str, error: grpc.aio.AioRpcError) -> Exception:
    message = f"{what} on {address}: {error.code().name} {error.details()}"
    if error.code() is grpc.StatusCode.NOT_FOUND:
        return NotFoundError(message)
    if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(message)
    if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(message)  # a reload may still be running there (see ``RolloutCoordinator``)
    return UnavailableError(message)


class GrpcReplicaControl(ReplicaControl):
    def __init__(self, replica_list: ReplicaList) -> None:
        self._list = replica_list
        self._channels: dict[str, grpc.aio.Channel] = {}

    def replicas(self, model: str) -> list[Replica]:
        return self._list.replicas(model)

    def _stub(self, address: str) -> model_service_pb2_grpc.ModelServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=channel_options())
            self._channels[address] = channel
        return model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]

    async def status(self, replica: Replica, served_name: str, timeout_s: float) -> list[VersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = served_name
        try:
            response = await self._stub(replica.address).GetModelStatus(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            raise _status_error(replica.address, "GetModelStatus", error) from error
        result = []
        for item in response.model_version_status:
            try:
                state = VersionState(item.state)
            except ValueError:
                state = VersionState.UNKNOWN
            error_text = item.status.error_message if item.status.error_code != 0 else ""
            result.append(VersionStatus(int(item.version), state, error_text))
        return result

    async def reload(self, address: str, configs: Sequence[LoadConfig], timeout_s: float) -> None:
        try:
            await self._stub(address).HandleReloadConfigRequest(reload_request(configs), timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            raise _status_error(address, "HandleReloadConfigRequest", error) from error

    async def retain(self, addresses: set[str]) -> None:
        """Closes the channels of addresses not in ``addresses``."""
        for address in [a for a in self._channels if a not in addresses]:
            await self._channels.pop(address).close()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
