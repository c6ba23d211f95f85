"""``ClusterView``: every replica of a bzid (v1 service tree and v3 bindings) minus evicted ones.

Implements the AgentService ``ReplicaView`` for any model of the bzid, lists rows for the ``replicas``
command and the availability snapshot for the metrics. Reads two ReplicaWatchers and the probe state;
not thread-safe (one asyncio loop).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.model_state import ModelState
from monolith_serving.core.zk_paths import ServerType, task_key
from monolith_serving.discovery.agent_view import sub_graph_matches, sub_graph_of, task_of_sub_graph
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.replica_manager.metrics import AvailabilitySnapshot
from monolith_serving.replica_manager.probe_state import ReplicaProbeStateManager
from monolith_serving.replica_manager.prober import ProbeTarget

__all__ = ["ClusterView", "ReplicaRow"]


def _state_name(stat: int) -> str:
    try:
        return ModelState(stat).name
    except ValueError:
        return str(stat)


@dataclass(frozen=True)
class ReplicaRow:
    """One registered replica. v1: ``key`` is ``ps:0``, ``replica`` the id; v3: ``key`` is the sub_graph,
    ``replica`` is ``ctx_cluster:ctx_id`` and ``state`` is BOUND."""

    model: str
    sub_graph: str
    task: int
    server_type: ServerType | None  # None for v3 rows
    key: str
    replica: str
    address: str | None
    state: str
    registered_available: bool
    target: ProbeTarget | None  # None when there is no address to probe

    @property
    def version_label(self) -> str:
        return self.key if self.server_type is not None else f"{self.model}:{self.sub_graph}"


class ClusterView:
    def __init__(self, *, v1: ReplicaWatcher, v3: ReplicaWatcher, probes: ReplicaProbeStateManager | None) -> None:
        self._v1 = v1
        self._v3 = v3
        self._probes = probes

    @property
    def stale(self) -> bool:
        return self._v1.stale

    # ---- rows ------------------------------------------------------------------------------------------
    def rows(self) -> list[ReplicaRow]:
        """Every registered replica, v1 then v3, in a stable order."""
        return [*self._v1_rows(), *self._v3_rows()]

    def _v1_rows(self) -> Iterator[ReplicaRow]:
        for info in self._v1.replicas():
            path, meta = info.path, info.meta
            target = ProbeTarget(info.address, meta.model_name) if info.address else None
            yield ReplicaRow(
                model=path.base_name,
                sub_graph=sub_graph_of(path.server_type, path.task),
                task=path.task,
                server_type=path.server_type,
                key=task_key(path.server_type, path.task),
                replica=path.replica_name,
                address=info.address,
                state=_state_name(meta.stat),
                registered_available=info.routable,
                target=target,
            )

    def _v3_rows(self) -> Iterator[ReplicaRow]:
        containers = self._v3.containers()
        for binding in self._v3.bindings():
            container = containers.get((binding.ctx_cluster, binding.ctx_id))
            address = container.grpc if container is not None else None
            yield ReplicaRow(
                model=binding.model,
                sub_graph=binding.sub_graph,
                task=task_of_sub_graph(binding.sub_graph),
                server_type=None,
                key=binding.sub_graph,
                replica=f"{binding.ctx_cluster}:{binding.ctx_id}",
                address=address,
                state="BOUND" if address else "NO_CONTAINER",
                registered_available=bool(address),
                target=ProbeTarget(address) if address else None,
            )

    def is_evicted(self, row: ReplicaRow) -> bool:
        return self._probes is not None and row.target is not None and self._probes.is_evicted(row.target)

    def _available_rows(self) -> Iterator[ReplicaRow]:
        for row in self.rows():
            if row.registered_available and not self.is_evicted(row):
                yield row

    def probe_targets(self) -> set[ProbeTarget]:
        """Replicas that clients may be routed to: registered AVAILABLE (v1) or bound (v3)."""
        return {row.target for row in self.rows() if row.registered_available and row.target is not None}

    def availability(self) -> AvailabilitySnapshot:
        """(model, sub_graph, task) → available replicas, with 0 for groups whose replicas are all out."""
        counts: dict[tuple[str, str, str], int] = {}
        for row in self.rows():
            group = (row.model, row.sub_graph, str(row.task))
            counts[group] = counts.get(group, 0) + (1 if row.registered_available and not self.is_evicted(row) else 0)
        return counts

    def models(self) -> list[str]:
        return sorted({row.model for row in self.rows()})

    # ---- ReplicaView -----------------------------------------------------------------------------------
    def _v1_models(self) -> set[str]:
        return {info.path.base_name for info in self._v1.replicas()}

    def get_replicas(self, server_type: ServerType, task: int, model_name: str) -> list[str]:
        model = model_name or self._only_model()
        sub_graph = sub_graph_of(server_type, task)
        return sorted(
            {
                row.address
                for row in self._available_rows()
                if row.address is not None
                and row.model == model
                and (
                    row.server_type is server_type and row.task == task
                    if row.server_type
                    else row.sub_graph == sub_graph
                )
            }
        )

    def heartbeat(self, server_type: ServerType, model_name: str) -> dict[str, list[str]]:
        """v1 keys for one model (named, or the only v1 model), plus v3 ``model:sub_graph`` keys."""
        v1_models = self._v1_models()
        model: str | None = model_name or None
        if model is None and len(v1_models) > 1:
            raise InvalidArgumentError(
                f"{len(v1_models)} models registered: name one in the 'model_name' request metadata"
            )
        v1_model = model or next(iter(v1_models), None)
        view: dict[str, set[str]] = {}
        for row in self._available_rows():
            if row.address is None:
                continue
            if row.server_type is not None:
                if row.model == v1_model and row.server_type is server_type:
                    view.setdefault(row.key, set()).add(row.address)
            elif (model is None or row.model == model) and sub_graph_matches(row.sub_graph, server_type):
                view.setdefault(f"{row.model}:{row.sub_graph}", set()).add(row.address)
        return {k: sorted(v) for k, v in sorted(view.items())}

    def _only_model(self) -> str:
        models = self.models()
        if len(models) == 1:
            return models[0]
        raise InvalidArgumentError(f"model_name is required: {len(models)} models are registered under this bzid")
