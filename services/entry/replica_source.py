"""Where the PS replicas of every shard are (and, with dense_alone, the ``dense_0`` replicas): a static
list, or the agent's AgentService.

``replicas(shard)`` is a cheap snapshot read on every request; sources that learn addresses at run time
replace the snapshot atomically (a new tuple), so readers never see a half-updated list.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Sequence

import grpc

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.grpc_server import channel_options
from monolith_serving.proto_gen.monolith.agent_service import agent_service_pb2, agent_service_pb2_grpc

logger = logging.getLogger(__name__)

_SERVER_TYPES = {"ps": agent_service_pb2.PS, "dense": agent_service_pb2.DENSE}


class ReplicaSource(abc.ABC):
    num_ps: int

    async def start(self) -> None:  # noqa: B027 - static sources have nothing to start
        """Begin tracking. Idempotent."""

    async def stop(self) -> None:  # noqa: B027
        """Stop tracking. Idempotent."""

    @abc.abstractmethod
    def replicas(self, shard: int) -> tuple[str, ...]:
        """Addresses (``host:port``) of the replicas of PS shard ``shard``; may be empty."""

    def all_addresses(self) -> set[str]:
        return {address for shard in range(self.num_ps) for address in self.replicas(shard)}


def v3_model_of(entry_name: str) -> str | None:
    """``demo`` for a v3 entry name ``demo:entry``; None for a v1 name such as ``entry``."""
    model, separator, _ = entry_name.rpartition(":")
    return model if separator else None


def sub_model_index(name: str, prefix: str) -> int | None:
    """``3`` for ``<prefix>_3`` or ``model:<prefix>_3`` (``ps_3``, ``demo:dense_0``); None otherwise."""
    leaf = name.rsplit(":", 1)[-1]
    head, _, digits = leaf.rpartition("_")
    return int(digits) if head == prefix and digits.isdigit() else None


def parse_ps_targets(values: Sequence[str], flag: str = "--ps_targets") -> tuple[tuple[str, ...], ...]:
    """``--ps_targets`` values -> replicas per shard.

    Each value is one shard, in shard order, with its replicas separated by commas; ``;`` inside a value
    also separates shards: ``--ps_targets a:1,b:2 --ps_targets c:3`` == ``--ps_targets 'a:1,b:2;c:3'``.
    """
    shards: list[tuple[str, ...]] = []
    for value in values:
        for shard_text in value.split(";"):
            replicas = tuple(a.strip() for a in shard_text.split(",") if a.strip())
            if not replicas:
                raise InvalidArgumentError(f"{flag} {value!r}: shard {len(shards)} has no address")
            for address in replicas:
                host, _, port = address.rpartition(":")
                if not host or not port.isdigit():
                    raise InvalidArgumentError(f"{flag}: {address!r} is not host:port")
            shards.append(replicas)
    return tuple(shards)


class StaticReplicaSource(ReplicaSource):
    def __init__(self, shards: Sequence[Sequence[str]]) -> None:
        self._shards = tuple(tuple(s) for s in shards)
        self.num_ps = len(self._shards)

    def replicas(self, shard: int) -> tuple[str, ...]:
        return self._shards[shard]


class AgentReplicaSource(ReplicaSource):
    """Polls ``AgentService.HeartBeat(server_type=PS)`` of the local agent, as Monolith's entry does.

    Keys ``ps:<i>`` (agent v1) and ``<model>:ps_<i>`` (v3) both map to shard i. A v3 agent answers for every
    model of its bzid, so with ``model`` set only that model's ``<model>:ps_<i>`` keys count. A failed poll
    keeps the previous snapshot (a restarting agent must not empty the PS list) and is logged; polling
    continues. With ``kind="dense"`` it tracks the dense servers instead (``HeartBeat(server_type=DENSE)``,
    keys ``dense:0`` / ``<model>:dense_0``; ``num_ps`` is then the number of dense sub-models, 1).
    """

    def __init__(
        self,
        *,
        agent_address: str,
        num_ps: int,
        model: str | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
        kind: str = "ps",
    ) -> None:
        if kind not in _SERVER_TYPES:
            raise InvalidArgumentError(f"replica kind must be one of {sorted(_SERVER_TYPES)}, got {kind!r}")
        self.num_ps = num_ps
        self._kind = kind
        self._model = model
        self._agent_address = agent_address
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._shards: tuple[tuple[str, ...], ...] = tuple(() for _ in range(num_ps))
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_poll_s = 0.0

    def replicas(self, shard: int) -> tuple[str, ...]:
        return self._shards[shard]

    async def start(self) -> None:
        if self._task is not None:
            return
        self._channel = grpc.aio.insecure_channel(self._agent_address, options=channel_options())
        await self.poll_once()
        self._task = asyncio.create_task(self._loop(), name="agent-replica-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def poll_once(self) -> bool:
        """One HeartBeat; True when the snapshot was refreshed."""
        if self._channel is None:
            return False
        stub = agent_service_pb2_grpc.AgentServiceStub(self._channel)  # type: ignore[no-untyped-call]
        started = time.monotonic()
        try:
            response = await stub.HeartBeat(
                agent_service_pb2.HeartBeatRequest(server_type=_SERVER_TYPES[self._kind]), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as error:
            logger.warning("HeartBeat to agent %s failed: %s %s", self._agent_address, error.code(), error.details())
            return False
        shards: list[list[str]] = [[] for _ in range(self.num_ps)]
        for key, address_list in response.addresses.items():
            owner, _, sub_graph = key.rpartition(":")
            v1 = owner == self._kind
            if not v1 and self._model is not None and owner != self._model:
                continue
            index = sub_model_index(f"{self._kind}_{sub_graph}" if v1 else sub_graph, self._kind)
            if index is None or index >= self.num_ps:
                continue
            shards[index].extend(a for a in address_list.address if a not in shards[index])
        self._shards = tuple(tuple(s) for s in shards)
        self.last_poll_s = time.monotonic() - started
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.poll_once()
            except Exception:
                logger.exception("agent replica poll step failed")
