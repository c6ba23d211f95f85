"""What AgentService answers, without gRPC: replica views and the local resource sample.

``ReplicaView`` is the one interface the AgentService servicer reads. The agent serves a
``WatcherReplicaView`` (its own model, from a ``ReplicaWatcher``); the replica-manager serves its own view
of every model with probe-based eviction. Both answer from memory; nothing here blocks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.zk_paths import ServerType
from monolith_serving.discovery.replica_watcher import ReplicaWatcher

__all__ = [
    "ReplicaView",
    "ResourceSample",
    "ResourceSampler",
    "WatcherReplicaView",
    "read_mem_available_bytes",
    "sub_graph_matches",
    "sub_graph_of",
    "task_of_sub_graph",
]

_TRAILING_NUMBER = re.compile(r"_(\d+)$")


def sub_graph_of(server_type: ServerType, task: int) -> str:
    """The v3 sub_graph serving a v1 task: ``entry``, ``ps_{task}``, ``dense_{task}``."""
    if server_type is ServerType.ENTRY:
        return "entry"
    return f"{server_type.value}_{task}"


def task_of_sub_graph(sub_graph: str) -> int:
    """``ps_3`` → 3; a sub_graph without a numeric suffix (``entry``) is task 0."""
    match = _TRAILING_NUMBER.search(sub_graph)
    return int(match.group(1)) if match else 0


def sub_graph_matches(sub_graph: str, server_type: ServerType) -> bool:
    """Whether a v3 sub_graph is of ``server_type`` (``entry`` / ``ps_*`` / ``dense*``)."""
    if server_type is ServerType.ENTRY:
        return sub_graph == "entry"
    return sub_graph.startswith(server_type.value)


class ReplicaView(Protocol):
    """The replica answers of AgentService. ``model_name`` "" means the view's default model."""

    @property
    def stale(self) -> bool:
        """True while the registry is unreachable and answers come from the last known view."""
        ...

    def get_replicas(self, server_type: ServerType, task: int, model_name: str) -> list[str]:
        """Sorted AVAILABLE addresses of one task (v3: of the sub_graph serving it)."""
        ...

    def heartbeat(self, server_type: ServerType, model_name: str) -> dict[str, list[str]]:
        """v1 ``{"ps:0": [...]}`` or v3 ``{"model:ps_0": [...]}`` for ``server_type``."""
        ...


class WatcherReplicaView:
    """A ReplicaView over one ReplicaWatcher (the agent's): its base_name is the default model.

    v1 ``get_replicas`` with a ``base_name`` ignores ``model_name``, as Monolith's v1 GetReplicas does
    (whatever model a client names, it gets this agent's model). Otherwise ``model_name`` picks the model
    and "" means ``base_name`` (HeartBeat's ``model_name`` metadata is our extension; Monolith clients omit it).
    ``idc`` / ``cluster`` restrict answers to one data centre (dc_aware). Call from the watcher's loop.
    """

    def __init__(
        self,
        watcher: ReplicaWatcher,
        *,
        agent_version: int = 1,
        base_name: str | None = None,
        idc: str | None = None,
        cluster: str | None = None,
    ) -> None:
        if agent_version not in (1, 3):
            raise ValueError(f"agent_version must be 1 or 3, got {agent_version}")
        self._watcher = watcher
        self._agent_version = agent_version
        self._base_name = base_name
        self._idc = idc
        self._cluster = cluster

    @property
    def stale(self) -> bool:
        return self._watcher.stale

    def _model(self, model_name: str) -> str | None:
        return model_name or self._base_name

    def get_replicas(self, server_type: ServerType, task: int, model_name: str) -> list[str]:
        if self._agent_version == 1:
            model = self._base_name if self._base_name is not None else (model_name or None)
            return self._watcher.get_replicas(server_type, task, model=model, idc=self._idc, cluster=self._cluster)
        model = self._model(model_name)
        if model is None:
            raise InvalidArgumentError("model_name is required (agent_version 3 serves several models)")
        return self._watcher.get_v3_replicas(
            model, sub_graph_of(server_type, task), idc=self._idc, cluster=self._cluster
        )

    def heartbeat(self, server_type: ServerType, model_name: str) -> dict[str, list[str]]:
        model = self._model(model_name)
        if self._agent_version == 1:
            return self._watcher.get_all_replicas(server_type, model=model, idc=self._idc, cluster=self._cluster)
        everything = self._watcher.get_all_v3_replicas(model=model, idc=self._idc, cluster=self._cluster)
        return {k: v for k, v in everything.items() if sub_graph_matches(k.partition(":")[2], server_type)}


# --------------------------------------------------------------------------- GetResource


def read_mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """``MemAvailable`` of /proc/meminfo in bytes; 0 when the file or the line is missing (non-Linux)."""
    try:
        text = meminfo.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            fields = line.split()
            # The kernel writes "MemAvailable:  123456 kB"; kB here means KiB.
            scale = 1024 if len(fields) > 2 and fields[2].lower() == "kb" else 1
            return int(fields[1]) * scale
    return 0


def _load_per_cpu() -> float:
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


@dataclass(frozen=True)
class ResourceSample:
    """One GetResource answer."""

    address: str
    shard_id: int
    replica_id: int
    memory_bytes: int
    cpu: float
    network: float
    work_load: float


class ResourceSampler:
    """Samples this host for GetResource. Best effort: memory is MemAvailable; ``cpu`` and ``work_load`` are
    the 1-minute load average per CPU; ``network`` is not measured (0). Reads two small /proc files."""

    def __init__(
        self,
        *,
        address: str,
        shard_id: int = 0,
        replica_id: int | Callable[[], int] = 0,
        meminfo: Path = Path("/proc/meminfo"),
        load_per_cpu: Callable[[], float] = _load_per_cpu,
    ) -> None:
        """``replica_id`` may be a callable: a v1 agent without a replica id learns it from the registry after
        start-up (its entry's sequential node), and GetResource reports it from then on."""
        self._address = address
        self._shard_id = shard_id
        self._replica_id = replica_id
        self._meminfo = meminfo
        self._load_per_cpu = load_per_cpu

    def sample(self) -> ResourceSample:
        load = self._load_per_cpu()
        return ResourceSample(
            address=self._address,
            shard_id=self._shard_id,
            replica_id=self._replica_id() if callable(self._replica_id) else self._replica_id,
            memory_bytes=read_mem_available_bytes(self._meminfo),
            cpu=load,
            network=0.0,
            work_load=load,
        )
