"""Which versions every PS replica has AVAILABLE, from its ``ModelService.GetModelStatus``.

The entry gates its versions on this (entry version V is served only when every shard has V AVAILABLE on
at least one replica) and the fan-out prefers replicas known to hold the pinned version. ``poll()`` is
one step of the entry's control loop; a replica that does not answer counts as having nothing.
With ``model_name`` set to ``remote_dense.dense_model_name`` the same tracker follows the ``dense_0``
replicas (dense_alone), whose versions gate the entry's versions too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from monolith_serving.core.cancellation import cancelled_by_caller
from monolith_serving.entry.ps_client import ChannelPool, ps_model_name
from monolith_serving.entry.replica_source import ReplicaSource
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2

logger = logging.getLogger(__name__)

STATUS_METHOD = "/tensorflow.serving.ModelService/GetModelStatus"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


class PsStatusTracker:
    def __init__(
        self,
        *,
        entry_model_name: str,
        replicas: ReplicaSource,
        channels: ChannelPool,
        timeout_s: float = 1.0,
        model_name: Callable[[str, int], str] = ps_model_name,
    ) -> None:
        self._entry_model_name = entry_model_name
        self._model_name = model_name
        self._replicas = replicas
        self._channels = channels
        self._timeout_s = timeout_s
        self._available: dict[str, frozenset[int]] = {}

    async def _status(self, address: str, shard: int) -> frozenset[int]:
        call = self._channels.channel(address).unary_unary(
            STATUS_METHOD,
            request_serializer=get_model_status_pb2.GetModelStatusRequest.SerializeToString,
            response_deserializer=get_model_status_pb2.GetModelStatusResponse.FromString,
        )
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self._model_name(self._entry_model_name, shard)
        try:
            response = await call(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            logger.debug("GetModelStatus %s shard %d: %s", address, shard, error.code())
            return frozenset()
        except asyncio.CancelledError:
            if cancelled_by_caller():
                raise
            # The replica's channel was retired under the poll: no answer, not the end of the control loop.
            return frozenset()
        return frozenset(s.version for s in response.model_version_status if s.state == AVAILABLE)

    async def poll(self) -> None:
        """Refreshes every replica's AVAILABLE versions concurrently."""
        targets = [(a, shard) for shard in range(self._replicas.num_ps) for a in self._replicas.replicas(shard)]
        results = await asyncio.gather(*(self._status(a, shard) for a, shard in targets))
        self._available = {a: versions for (a, _), versions in zip(targets, results, strict=True)}

    def knows_version(self, address: str, version: int) -> bool | None:
        versions = self._available.get(address)
        return None if versions is None else version in versions

    def shard_versions(self, shard: int) -> frozenset[int]:
        """Versions AVAILABLE on at least one replica of ``shard``."""
        found: set[int] = set()
        for address in self._replicas.replicas(shard):
            found |= self._available.get(address, frozenset())
        return frozenset(found)

    def ready(self, version: int) -> bool:
        return all(version in self.shard_versions(shard) for shard in range(self._replicas.num_ps))
