"""The agent's ReplicaUpdater role: publish the local sub-model replicas and keep their ``stat`` current.

Each local replica is an ephemeral v1 node holding ``ReplicaMeta`` JSON. Registration starts with
``stat`` UNKNOWN; a poll loop asks the local model server for its version states every
``interval_s`` and rewrites the node when the chosen state changes. Session loss is handled by the
Discovery backend (registrations are re-created on reconnect); this class only tracks readiness.

A replica without a replica id (``-1``) registers as Monolith's does (``replica_manager.ReplicaUpdater``):
a PS or dense under the leaf ``-1``; an entry never so, it takes a sequential node first
(:func:`claim_entry_replica`) and is registered under the number that node got.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.model_state import ModelState
from monolith_serving.core.zk_paths import ReplicaPath, ServerType
from monolith_serving.discovery.base import Discovery, SessionState
from monolith_serving.discovery.metrics import DiscoveryMetrics
from monolith_serving.discovery.replica_meta import ReplicaMeta

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LocalReplica:
    """One sub-model served by this agent's local model server."""

    path: ReplicaPath
    model_name: str  # the sub-model name the local server knows (e.g. "ps_0", "entry")
    address: str  # "host:port" of the local serving gRPC endpoint
    address_ipv6: str | None = None
    archon_address: str | None = None
    archon_address_ipv6: str | None = None

    def meta(self, stat: int) -> ReplicaMeta:
        return ReplicaMeta(
            address=self.address,
            address_ipv6=self.address_ipv6,
            stat=stat,
            model_name=self.model_name,
            server_type=self.path.server_type.value,
            task=self.path.task,
            replica=self.path.replica_id,
            archon_address=self.archon_address,
            archon_address_ipv6=self.archon_address_ipv6,
        )


# Monolith's entry without a replica id creates ``{task_path}/0`` ephemeral and sequential: ZooKeeper appends its
# 10-digit counter, so the leaf is an 11-digit entry id, and the entry adopts that number as its replica id.
ENTRY_SEQUENCE_PREFIX = "0"


def _is_unclaimed_entry(path: ReplicaPath) -> bool:
    return path.server_type is ServerType.ENTRY and not path.has_id


async def claim_entry_replica(discovery: Discovery, entry: LocalReplica) -> LocalReplica:
    """Register ``entry``, an entry replica without a replica id, as Monolith's entry does and return it under the
    id it adopted: the number of the sequential node ``{task_path}/0<counter>`` (stat UNKNOWN).

    The node is a registration of ``discovery`` from then on, re-created at the same path after a session loss, so
    the id stays (Monolith keeps the adopted id too). UnavailableError without a live session (nothing registered).
    """
    if not _is_unclaimed_entry(entry.path):
        raise ValueError(f"only an entry without a replica id claims a sequential node, not {entry.path.path}")
    prefix = f"{entry.path.task_path}/{ENTRY_SEQUENCE_PREFIX}"
    created = await discovery.register_ephemeral_sequential(prefix, entry.meta(ModelState.UNKNOWN).to_json())
    try:
        adopted = dataclasses.replace(entry.path, replica_id=ReplicaPath.parse(created).replica_id)
        if adopted.path != created:
            raise InvalidArgumentError(f"sequential node {created} is not an 11-digit entry id")
    except InvalidArgumentError:
        await discovery.unregister(created)
        raise
    claimed = dataclasses.replace(entry, path=adopted)
    await discovery.update_ephemeral(created, claimed.meta(ModelState.UNKNOWN).to_json())  # data names the id too
    return claimed


# Returns the ModelVersionStatus.State of every version of the replica's model, oldest version first
# (the agent wires this to the local server's GetModelStatus). Raising means "server not answering".
StatusSource = Callable[[LocalReplica], Awaitable[Sequence[int]]]


def choose_state(states: Sequence[int]) -> int:
    """AVAILABLE if any version is; otherwise the newest version's state; UNKNOWN if no versions."""
    if ModelState.AVAILABLE in states:
        return ModelState.AVAILABLE
    return states[-1] if states else ModelState.UNKNOWN


class ReplicaUpdater:
    """Registers and refreshes local replicas. ``start``/``stop`` are idempotent; use from one loop.

    ``ready`` is True while the session is CONNECTED and every replica is registered; it turns False on
    SUSPENDED/LOST and back to True after the backend has reconnected (and re-created the nodes).
    """

    def __init__(
        self,
        *,
        discovery: Discovery,
        replicas: Sequence[LocalReplica],
        status_source: StatusSource,
        interval_s: float,
        metrics: DiscoveryMetrics | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        paths = [r.path.path for r in replicas]
        if len(set(paths)) != len(paths):
            raise ValueError(f"duplicate replica paths: {paths}")
        unclaimed = [r.path.path for r in replicas if _is_unclaimed_entry(r.path)]
        if unclaimed:
            # Monolith's entry never writes `entry:0/-1`; readers would not find two such entries apart.
            raise ValueError(f"an entry without a replica id registers through claim_entry_replica: {unclaimed}")
        self._discovery = discovery
        self._replicas = tuple(replicas)
        self._status_source = status_source
        self._interval_s = interval_s
        self._metrics = metrics or DiscoveryMetrics()
        self._states: dict[str, int] = {}
        self._registered = False
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def ready(self) -> bool:
        return self._registered and self._discovery.state is SessionState.CONNECTED

    @property
    def replicas(self) -> tuple[LocalReplica, ...]:
        return self._replicas

    def state_of(self, replica: LocalReplica) -> int:
        """The ``stat`` last written for ``replica``."""
        return self._states.get(replica.path.path, ModelState.UNKNOWN)

    async def start(self) -> None:
        if self._task is not None or self._stopped:
            return
        self._discovery.add_state_listener(self._on_session_state)
        for replica in self._replicas:
            self._states[replica.path.path] = ModelState.UNKNOWN
            await self._discovery.register_ephemeral(replica.path.path, replica.meta(ModelState.UNKNOWN).to_json())
        self._registered = True
        self._task = asyncio.create_task(self._poll_loop(), name="replica-updater")

    async def stop(self) -> None:
        """Stop polling and delete our nodes (before the caller stops the model servers)."""
        if self._stopped:
            return
        self._stopped = True
        self._registered = False
        self._discovery.remove_state_listener(self._on_session_state)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for replica in self._replicas:
            await self._discovery.unregister(replica.path.path)

    def _on_session_state(self, state: SessionState) -> None:
        if state is SessionState.LOST:
            log.warning("registry session lost: replicas unready until the nodes are re-created")
        elif state is SessionState.CONNECTED:
            log.info("registry session connected: %d replica nodes (re)published", len(self._replicas))

    async def poll_once(self) -> None:
        """One step: read each replica's state and write the node if the state changed."""
        for replica in self._replicas:
            try:
                state = choose_state(list(await self._status_source(replica)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A server that does not answer cannot serve: advertise UNKNOWN until it does. Logged when the
                # state changes (below), not every poll: a hung server would log once a second.
                state = ModelState.UNKNOWN
                if self._states.get(replica.path.path) != state:
                    log.warning("status of %s unavailable: %s", replica.model_name, _one_line(exc))
            key = replica.path.path
            if self._states.get(key) != state:
                log.info("replica %s stat %s -> %s", key, self._states.get(key), state)
                await self._discovery.update_ephemeral(key, replica.meta(state).to_json())
                self._states[key] = state

    async def _poll_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad step must never end the loop.
                self._metrics.updater_step_errors.inc()
                log.exception("replica updater step failed")
            finally:
                self._metrics.updater_step_seconds.observe(time.monotonic() - started)
            await asyncio.sleep(self._interval_s)

    async def __aenter__(self) -> ReplicaUpdater:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def _one_line(error: BaseException) -> str:
    """A gRPC error's code and details (its repr spans several lines), else the error's type and text."""
    if isinstance(error, grpc.RpcError):
        code, details = error.code(), error.details()
        return f"{code.name if code else 'UNKNOWN'}: {details}"
    return f"{type(error).__name__}: {error}"
