"""PS-first, mixed-version-free rollout of a model version, and reconciliation of replica configs.

For a new version V of a model serving ``old`` (transport-free: replicas are driven through
``ReplicaControl``):

1. **PS phase** — every PS replica gets ``specific {old, V}`` and loads V beside old. Wait (bounded by
   ``timeout_s``) until every PS task has at least one replica and V is AVAILABLE on all its replicas.
   The dense servers of a dense_alone model (``dense_0``) are the PS's peers here and below: the entry pins
   its dense calls to its own version as it does its PS calls, so they load V beside old in this phase (the
   phase waits for at least one when ``ModelTarget.dense``), keep old until the entries left it, and are
   cleaned up with the PS.
   (``old`` stands for every version the PS keeps for the entries: after a restarted manager adopted
   entries split mid-rollout, that can be more than one; see ``adopt``.)
2. **Entry phase** — every entry gets ``specific {V}``; wait until each reports V AVAILABLE and old gone.
   An entry serves V only with PS rows of V (it pins its PS calls to its own version), and every PS
   replica holds both versions meanwhile, so no response mixes versions.
3. **Drain** ``drain_s`` (requests that started on old finish), then **PS cleanup** — ``specific {V}``.

A load failure (a replica reports V END with an error) or the deadline aborts (the record's ``cause`` says
which): entries (only if the entry phase had begun) go back to ``specific {old}``, then PS to
``specific {old}``; old keeps serving throughout.
When nothing served before (a failed *first* rollout), the abort restores exactly that: PS replicas get
``specific {}`` (the PS unloads every version) and touched entries an empty model list (``LoadConfig.drop``),
so V serves nowhere and the model serves nothing until a later version succeeds. A rollout is a first one
only when no replica held a version: a restarted manager ``adopt``s what the replicas serve before any
rollout.

A reload RPC is bounded by ``reload_timeout_s`` (30 s), far below the rollout's deadline: a PS answers it only
once its versions settled, so a load may outlast it. Our replicas apply a reload to its end even when its caller
stops waiting, so a reload that timed out counts as sent and its progress is followed by status polls; it is sent
again (after ``resend_interval_s``) only while the replica does not even hold the wanted versions (loading
counts), never on top of a load still running: the duplicate would queue behind it and, being an explicit reload,
retry a failed load at once and hide its error from the status polls. Cancelled (the manager is stopping), a
rollout leaves the replicas as they are: no state a rollout passes through mixes versions, and a restarted
manager decides the rollout again from what the replicas serve (see ``adopt``).

The coordinator keeps the *desired* config of every model (``ModelState``) and ``reconcile`` re-sends it to
replicas that drifted (a restarted replica comes back with its own start-up config). Not thread-safe:
use it from one asyncio task.

A reload replaces an address's whole model set, and a unified container hosts several sub-models of a model
behind one address (e.g. ``ps_0`` and ``entry``). So every reload to an address carries every sub-model of
the model there: the config last sent to each, or what one never configured holds now. Reloads to one
address are serialized, so a merged config is never overtaken by an older one.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from monolith_serving.core.errors import DeadlineExceededError, MonolithServingError, NotFoundError, UnavailableError
from monolith_serving.core.serving_spec import DENSE_SUB_MODEL
from monolith_serving.model_manager.control import (
    LoadConfig,
    Replica,
    ReplicaControl,
    ServerKind,
    VersionState,
    VersionStatus,
)
from monolith_serving.model_manager.metrics import ModelManagerMetrics

logger = logging.getLogger(__name__)

_HELD = (VersionState.START, VersionState.LOADING, VersionState.AVAILABLE)
# What an entry calls, pinned to its own version: these load a version before the entries switch to it.
BACKEND = frozenset({ServerKind.PS, ServerKind.DENSE})


@dataclass(frozen=True)
class ModelTarget:
    """A model the manager rolls out, and where its replicas load versions from."""

    name: str  # the model (discovery base_name, p2p ``{model}``)
    base_dir: str  # replicas load ``{base_dir}/{sub_graph}/{version}``
    num_ps: int
    served_prefix: str = ""  # model_spec.name prefix: "" (agent v1: ps_0, entry) or "<model>:" (v3)
    # dense_alone: the entry scores through a ``dense_0`` server (its serving spec's dense backend is "remote"),
    # which must hold a version before an entry may serve it, as every PS shard must.
    dense: bool = False

    def served_name(self, sub_graph: str) -> str:
        return f"{self.served_prefix}{sub_graph}"

    def load_config(self, replica: Replica, versions: Iterable[int]) -> LoadConfig:
        wanted = tuple(sorted(set(versions)))
        return LoadConfig(
            served_name=self.served_name(replica.sub_graph),
            base_path=f"{self.base_dir.rstrip('/')}/{replica.sub_graph}",
            versions=wanted,
            # An entry keeps serving under an empty specific list; only dropping the model stops it.
            drop=replica.kind is ServerKind.ENTRY and not wanted,
        )


@dataclass(frozen=True)
class RolloutConfig:
    timeout_s: float = 600.0  # per rollout (PS + entry phases); the abort gets as long again
    poll_interval_s: float = 0.5
    rpc_timeout_s: float = 5.0  # GetModelStatus
    # HandleReloadConfigRequest: a PS answers once its versions settled, but our replicas finish a reload whose
    # caller stopped waiting, and status polls follow it. Far below ``timeout_s``, so one replica that does not
    # answer (stopped, partitioned) never holds up the polls of the others.
    reload_timeout_s: float = 30.0
    drain_s: float = 1.0  # between the entry switch and the PS cleanup
    resend_interval_s: float = 10.0  # re-send a drifted replica's config at most this often

    def __post_init__(self) -> None:
        if min(self.timeout_s, self.poll_interval_s, self.rpc_timeout_s, self.reload_timeout_s) <= 0:
            raise ValueError("rollout timeouts and intervals must be > 0")


class Phase(enum.StrEnum):
    IDLE = "idle"
    PS_LOADING = "ps_loading"
    ENTRY_SWITCHING = "entry_switching"
    PS_CLEANUP = "ps_cleanup"
    ABORTING = "aborting"


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class AbortCause(enum.StrEnum):
    """Why a rollout failed: only a load error says the version itself is bad."""

    LOAD_FAILED = "load_failed"  # a replica reported the version END with an error
    TIMED_OUT = "timed_out"  # the deadline passed (a slow load, or a replica unreachable for a while)


@dataclass(frozen=True)
class RolloutRecord:
    version: int
    previous: int | None
    outcome: Outcome
    reason: str
    started_s: float  # wall clock
    finished_s: float
    rollback: bool = False
    cause: AbortCause | None = None  # set when the outcome is FAILED


@dataclass(frozen=True)
class ReplicaView:
    """The last status of one replica: its versions, or why it could not be read."""

    replica: Replica
    versions: tuple[VersionStatus, ...] = ()
    error: str = ""
    seen_s: float = 0.0  # wall clock
    hosting: bool = True  # False: reachable but the model is not hosted (NOT_FOUND)

    def available(self) -> set[int]:
        return {s.version for s in self.versions if s.state is VersionState.AVAILABLE}


@dataclass
class ModelState:
    """Desired and observed state of one model. Owned by the control loop's task."""

    target: ModelTarget
    serving: int | None = None  # the version entries serve (committed by the last rollout)
    ps_versions: tuple[int, ...] = ()  # desired config of the PS, and of the dense servers (``BACKEND``)
    entry_versions: tuple[int, ...] = ()  # desired entry config
    phase: Phase = Phase.IDLE
    rolling_to: int | None = None
    serving_since_s: float | None = None  # wall clock
    adopted: bool = False  # the serving version was learned from (or set on) the replicas
    last_rollout: RolloutRecord | None = None
    views: dict[Replica, ReplicaView] = field(default_factory=dict)
    # Last config sent to each replica and when (monotonic); dropped when a replica vanishes or stops
    # answering, so it gets its config again as soon as it is back.
    sent: dict[Replica, tuple[LoadConfig, float]] = field(default_factory=dict)
    # Replicas whose last reload (in ``sent``) did not answer within ``reload_timeout_s``: it may still be running.
    unanswered: set[Replica] = field(default_factory=set)

    def desired(self, kind: ServerKind) -> tuple[int, ...]:
        return self.ps_versions if kind in BACKEND else self.entry_versions

    def in_use(self) -> set[int]:
        """Versions the manager wants served or some replica reports holding."""
        used = set(self.ps_versions) | set(self.entry_versions)
        if self.rolling_to is not None:
            used.add(self.rolling_to)
        for view in self.views.values():
            used.update(s.version for s in view.versions if s.state in _HELD)
        return used


class RolloutError(MonolithServingError):
    """A phase could not finish: a load failed or the deadline passed (``cause`` says which)."""

    def __init__(self, message: str, cause: AbortCause) -> None:
        super().__init__(message)
        self.cause = cause


def _versions(*versions: int | None) -> tuple[int, ...]:
    return tuple(sorted({v for v in versions if v is not None}))


def _settled(view: ReplicaView, config: LoadConfig, want: set[int], gone: set[int]) -> bool:
    """The replica shows ``config`` took effect: ``want`` AVAILABLE and none of ``gone`` (a dropped model:
    not hosted at all)."""
    if config.drop:
        return not view.hosting or (not view.error and not view.available())
    return not view.error and want <= view.available() and not gone & view.available()


PhaseListener = Callable[[], Awaitable[None]]
_ENTRIES = frozenset({ServerKind.ENTRY})


class RolloutCoordinator:
    def __init__(
        self,
        *,
        control: ReplicaControl,
        config: RolloutConfig,
        metrics: ModelManagerMetrics,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._control = control
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        # One lock per replica address, held while its merged config is built and sent. Weak values: a lock
        # lives while some task holds or awaits it, so addresses that come and go leave nothing behind.
        self._address_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # Every model this coordinator was handed, by name: a reload to a container hosting sub-models of several
        # models must name them all (see ``_hosted_at``).
        self._states: dict[str, ModelState] = {}

    def track(self, state: ModelState) -> None:
        """Makes ``state``'s model known for reloads of shared containers (every public method also does)."""
        self._states[state.target.name] = state

    # ------------------------------------------------------------------ rollout

    async def rollout(
        self, state: ModelState, version: int, *, rollback: bool = False, on_phase: PhaseListener | None = None
    ) -> RolloutRecord:
        """Moves ``state``'s model to ``version`` through the three phases; never raises for a failed
        rollout (the record says what happened; the old version keeps serving). ``on_phase`` is awaited
        after each phase change (the manager persists the rollout state there); its errors are logged."""
        self.track(state)
        notify = _listener(on_phase)
        model = state.target.name
        old = state.serving
        # What the PS keeps while V loads: the serving version and any other an entry may still serve (after
        # adopting entries split mid-rollout); every entry must be rid of them before the PS drops them.
        kept = set(state.ps_versions) | set(_versions(old))
        started_s, started = self._wall(), self._clock()
        what = "rollback" if rollback else "rollout"
        logger.info("%s %s: %s from version %s to %d", model, what, what, old, version)
        state.rolling_to = version
        self._metrics.rollout_in_progress.labels(model).set(version)
        deadline = started + self._config.timeout_s
        entries_touched = False
        try:
            try:
                state.phase = Phase.PS_LOADING
                state.ps_versions = _versions(*kept, version)
                await notify()
                await self._converge(state, BACKEND, deadline, want={version}, gone=set(), fail_on=version)
                state.phase = Phase.ENTRY_SWITCHING
                entries_touched = True
                state.entry_versions = (version,)
                await notify()
                gone = kept - {version}
                await self._converge(state, _ENTRIES, deadline, want={version}, gone=gone, fail_on=version)
                state.serving = version
                state.serving_since_s = self._wall()
                state.adopted = True
                await self._sleep(self._config.drain_s)
                state.phase = Phase.PS_CLEANUP
                state.ps_versions = (version,)
                await notify()
                try:
                    cleanup_deadline = self._clock() + self._config.timeout_s
                    await self._converge(state, BACKEND, cleanup_deadline, want={version}, gone=gone, fail_on=None)
                except RolloutError as error:
                    # V serves everywhere; a PS still holding old only costs memory and reconcile retries it.
                    logger.warning("%s: PS cleanup of version %s incomplete: %s", model, old, error.message)
                record = RolloutRecord(version, old, Outcome.SUCCEEDED, "", started_s, self._wall(), rollback)
                logger.info("%s %s to version %d succeeded in %.1f s", model, what, version, self._clock() - started)
            except RolloutError as error:
                state.phase = Phase.ABORTING
                await notify()
                await self._abort(state, old, version, entries_touched, kept)
                record = RolloutRecord(
                    version, old, Outcome.FAILED, error.message, started_s, self._wall(), rollback, error.cause
                )
                self._metrics.rollout_failures.labels(model).inc()
                logger.error(
                    "%s %s to version %d ABORTED, %s: %s",
                    model, what, version,
                    "nothing served before and nothing serves now" if old is None else f"version {old} keeps serving",
                    error.message,
                )  # fmt: skip
        except asyncio.CancelledError:
            # The manager is stopping. Nothing is undone (an abort waits on replicas too); see the module docstring.
            logger.warning(
                "%s %s to version %d INTERRUPTED in phase %s after %.1f s (the manager is stopping): replicas are "
                "left as they are; the next start decides it again from what they serve",
                model, what, version, state.phase.value, self._clock() - started,
            )  # fmt: skip
            self._metrics.rollouts.labels(model, "interrupted").inc()
            raise
        finally:
            state.phase = Phase.IDLE
            state.rolling_to = None
            self._metrics.rollout_in_progress.labels(model).set(0)
        state.last_rollout = record
        self._metrics.rollouts.labels(model, record.outcome.value).inc()
        self._metrics.rollout_seconds.labels(model).observe(self._clock() - started)
        return record

    async def _abort(
        self, state: ModelState, old: int | None, version: int, entries_touched: bool, kept: set[int]
    ) -> None:
        """Back to what served before: entries ``specific {old}``, or serve nothing when ``old`` is None; the
        PS keeps what it kept for the entries before (``reconcile`` releases it once they settle)."""
        deadline = self._clock() + self._config.timeout_s
        if entries_touched:
            state.entry_versions = _versions(old)
            try:
                await self._converge(state, _ENTRIES, deadline, want=set(_versions(old)), gone={version}, fail_on=None)
            except RolloutError as error:
                logger.error("%s: entries did not all return to version %s: %s", state.target.name, old, error.message)
        # What an entry may still serve stays on the PS (V too, when adopted entries served it before this
        # rollout); ``reconcile`` releases it once the entries have settled on ``old``.
        state.ps_versions = _versions(*kept)
        try:
            await self._converge(
                state, BACKEND, deadline, want=set(_versions(old)), gone={version} - kept, fail_on=None
            )
        except RolloutError as error:
            logger.error("%s: PS did not all return to version %s: %s", state.target.name, old, error.message)

    async def _converge(
        self,
        state: ModelState,
        kinds: frozenset[ServerKind],
        deadline: float,
        *,
        want: set[int],
        gone: set[int],
        fail_on: int | None,
    ) -> None:
        """Sends the desired config to every replica of ``kinds`` and waits until each has ``want`` AVAILABLE
        and none of ``gone``. Raises RolloutError on a failed load of ``fail_on`` or at ``deadline``."""
        target = state.target
        while True:
            replicas = [r for r in self._control.replicas(target.name) if r.kind in kinds]
            await self._push(state, replicas, deadline)
            views = await self._observe_replicas(state, replicas)
            for view in views:
                for status in view.versions:
                    if status.version == fail_on and status.failed:
                        raise RolloutError(
                            f"{view.replica.sub_graph} replica {view.replica.address}: version {fail_on} failed "
                            f"to load: {status.error}",
                            AbortCause.LOAD_FAILED,
                        )
            pending = [
                f"{v.replica.sub_graph}@{v.replica.address}"
                + (f" ({v.error})" if v.error else f" (available {sorted(v.available())})")
                for v in views
                if not _settled(v, target.load_config(v.replica, state.desired(v.replica.kind)), want, gone)
            ]
            if ServerKind.PS in kinds:
                tasks = {r.task for r in replicas if r.kind is ServerKind.PS}
                pending += [f"ps_{t} (no replica)" for t in range(target.num_ps) if t not in tasks]
            if ServerKind.DENSE in kinds and target.dense and not any(r.kind is ServerKind.DENSE for r in replicas):
                pending.append(f"{DENSE_SUB_MODEL} (no replica)")
            if not pending:
                return
            if self._clock() >= deadline:
                names = " and ".join(k.value for k in sorted(kinds))
                raise RolloutError(
                    f"timed out waiting for {names} replicas: {', '.join(pending)}", AbortCause.TIMED_OUT
                )
            await self._sleep(self._config.poll_interval_s)

    async def _push(self, state: ModelState, replicas: Sequence[Replica], deadline: float) -> None:
        """Sends the desired config to replicas that were not sent exactly this config yet, or whose reload did
        not answer and seems never to have arrived (``_lost``)."""
        now = self._clock()
        todo = []
        for replica in replicas:
            config = state.target.load_config(replica, state.desired(replica.kind))
            sent = state.sent.get(replica)
            if sent is None or sent[0] != config or self._lost(state, replica, config, sent[1], now):
                todo.append((replica, config))
        await self._send_all(state, todo, deadline)

    def _lost(self, state: ModelState, replica: Replica, config: LoadConfig, sent_s: float, now: float) -> bool:
        """True for a reload that did not answer when, ``resend_interval_s`` later, the replica still does not
        hold (loading or serving) every version it names. Never while it does: the reload is then still running,
        and a duplicate would retry a failed load at once and hide the error the status polls look for."""
        if replica not in state.unanswered or now - sent_s < self._config.resend_interval_s:
            return False
        view = state.views.get(replica)
        if view is None:
            return True
        if view.error:
            return False  # unreachable: ``_observe_replicas`` forgets the send, so it is sent again once back
        if config.drop:
            return view.hosting
        return not set(config.versions) <= {s.version for s in view.versions if s.state in _HELD}

    async def _send_all(self, state: ModelState, todo: Sequence[tuple[Replica, LoadConfig]], deadline: float) -> None:
        """One reload per address (replicas sharing it get theirs together); addresses in parallel."""
        by_address: dict[str, dict[Replica, LoadConfig]] = {}
        for replica, config in todo:
            by_address.setdefault(replica.address, {})[replica] = config
        await asyncio.gather(*(self._send(state, a, updates, deadline) for a, updates in by_address.items()))

    def _address_lock(self, address: str) -> asyncio.Lock:
        lock = self._address_locks.get(address)
        if lock is None:
            lock = asyncio.Lock()
            self._address_locks[address] = lock
        return lock

    async def _send(
        self, state: ModelState, address: str, updates: Mapping[Replica, LoadConfig], deadline: float
    ) -> None:
        # Built under the lock: the merged config must include what an earlier reload there just set.
        # Never the whole rollout deadline: a replica that does not answer would hold up this phase's status
        # polls (and noticing a load failure elsewhere) that long.
        timeout_s = min(self._config.reload_timeout_s, max(self._config.rpc_timeout_s, deadline - self._clock()))
        async with self._address_lock(address):
            try:
                configs = await self._hosted_at(state, address, updates)
                await self._control.reload(address, configs, timeout_s)
            except DeadlineExceededError as error:
                # A PS answers once its versions settled, so a long load outlasts the call; our replicas finish a
                # reload whose caller stopped waiting. Counted as sent: status polls follow it (see ``_lost``).
                now = self._clock()
                for replica, config in updates.items():
                    self._metrics.replica_reloads.labels(state.target.name, replica.sub_graph, "timeout").inc()
                    state.sent[replica] = (config, now)
                    state.unanswered.add(replica)
                    logger.warning(
                        "reload of %s@%s to %s not answered within %.0f s (%s); following it by status",
                        replica.sub_graph, address, list(config.versions), timeout_s, error.message,
                    )  # fmt: skip
                return
            except MonolithServingError as error:
                for replica, config in updates.items():
                    self._metrics.replica_reloads.labels(state.target.name, replica.sub_graph, "error").inc()
                    state.sent.pop(replica, None)
                    state.unanswered.discard(replica)
                    logger.warning(
                        "reload of %s@%s to %s failed: %s", replica.sub_graph, address, config.versions, error.message
                    )
                return
            now = self._clock()
            for replica, config in updates.items():
                self._metrics.replica_reloads.labels(state.target.name, replica.sub_graph, "ok").inc()
                state.sent[replica] = (config, now)
                state.unanswered.discard(replica)
                logger.info("%s@%s now configured for versions %s", replica.sub_graph, address, list(config.versions))

    async def _hosted_at(
        self, state: ModelState, address: str, updates: Mapping[Replica, LoadConfig]
    ) -> list[LoadConfig]:
        """The whole config at ``address``: ``updates`` of ``state``'s model, and for every other replica there —
        of this model or of another model this coordinator manages (a unified container may host several) —
        the config it was last sent or, never configured, what it holds now (so the reload leaves it be).
        Raises UnavailableError when what such a replica holds cannot be read (the reload would guess).
        A model no coordinator here manages cannot be seen, and a reload there drops it."""
        name = state.target.name
        configs: dict[tuple[str, Replica], LoadConfig] = {(name, r): c for r, c in updates.items()}
        others = [s for n, s in sorted(self._states.items()) if n != name]
        for model in [state, *others]:
            for replica in self._control.replicas(model.target.name):
                key = (model.target.name, replica)
                if replica.address != address or key in configs:
                    continue
                held = await self._held_config(model, replica)
                if held is not None:
                    configs[key] = held
        return [configs[k] for k in sorted(configs)]

    async def _held_config(self, state: ModelState, replica: Replica) -> LoadConfig | None:
        """What a replica not being reconfigured keeps: its last config, or what it holds; None when it hosts
        nothing of the model (leaving it out keeps it so)."""
        sent = state.sent.get(replica)
        if sent is not None:
            return sent[0]
        view = state.views.get(replica)
        if view is None or view.error:
            view = state.views[replica] = await self._view(state, replica)
        if not view.hosting:
            return None
        if view.error:
            raise UnavailableError(f"{replica.sub_graph}@{replica.address} status unknown: {view.error}")
        return state.target.load_config(replica, {s.version for s in view.versions if s.state in _HELD})

    async def _observe_replicas(self, state: ModelState, replicas: Sequence[Replica]) -> list[ReplicaView]:
        views = await asyncio.gather(*(self._view(state, r) for r in replicas))
        for view in views:
            state.views[view.replica] = view
            sent = state.sent.get(view.replica)
            dropped = sent is not None and sent[0].drop and not view.hosting  # what we asked for
            if view.error and not dropped:
                state.sent.pop(view.replica, None)  # unreachable: send again when it is back
                state.unanswered.discard(view.replica)
        return list(views)

    async def _view(self, state: ModelState, replica: Replica) -> ReplicaView:
        name = state.target.served_name(replica.sub_graph)
        try:
            versions = await self._control.status(replica, name, self._config.rpc_timeout_s)
        except NotFoundError as error:
            # Reachable but not hosting the model (e.g. restarted without config): it needs our config.
            return ReplicaView(replica, (), f"not hosting {name}: {error.message}", self._wall(), hosting=False)
        except MonolithServingError as error:
            return ReplicaView(replica, (), error.message, self._wall())
        return ReplicaView(replica, tuple(sorted(versions, key=lambda s: s.version)), "", self._wall())

    # ------------------------------------------------------------------ steady state

    async def observe(self, state: ModelState) -> bool:
        """Refreshes every replica's view (and forgets vanished replicas); True when all answered. Then lets
        the control release what it holds for addresses no tracked model lists any more: pods come and go
        with new addresses, and each would otherwise keep a connection for good."""
        self.track(state)
        replicas = self._control.replicas(state.target.name)
        known = set(replicas)
        for gone in [r for r in state.views if r not in known]:
            del state.views[gone]
            state.sent.pop(gone, None)
            state.unanswered.discard(gone)
        views = await self._observe_replicas(state, replicas)
        listed = {r.address for name in self._states for r in self._control.replicas(name)}
        await self._control.retain(listed)
        return all(not v.error for v in views)

    async def adopt(
        self, state: ModelState, *, persisted_serving: int | None = None, failed: Collection[int] = ()
    ) -> None:
        """Learns what serves (at start, after ``observe``, before the first rollout), so that a rollout never
        starts as a *first* one -- whose abort serves nothing -- while some replica still holds a version.

        The serving version is, in order: ``persisted_serving`` (the previous run's, from the state node)
        while some entry has it AVAILABLE and every PS shard holds it; else the newest such version; failing
        both (entries restarting, shards split), the persisted version if some replica has it AVAILABLE, else
        the newest one AVAILABLE on an entry, else on a PS; never a ``failed`` one (see ``adoptable_version``).
        The PS is told to keep every version an entry serves now (entries may be split mid-rollout) until the
        entries settle (see ``reconcile``). Leaves ``state`` alone when nothing adoptable is AVAILABLE (a fresh
        cluster), and once this manager has rolled out itself (it then knows what it left serving)."""
        if state.adopted or state.last_rollout is not None:
            return
        views = list(state.views.values())
        version = adoptable_version(views, persisted_serving, failed)
        if version is None:
            return
        state.serving = version
        state.entry_versions = (version,)
        state.ps_versions = _versions(version, *_served_by_entries(views))
        state.serving_since_s = self._wall()
        state.adopted = True
        logger.info(
            "%s: adopted version %d (PS keeps %s while entries serve them)",
            state.target.name, version, list(state.ps_versions),
        )  # fmt: skip

    async def reconcile(self, state: ModelState) -> None:
        """Re-sends the desired config to replicas whose status drifted from it (call when idle, after
        ``observe``). Replicas not yet told anything get their config right away; a replica that was sent
        the config but still drifts (e.g. it restarted) gets it again after ``resend_interval_s``."""
        self.track(state)
        if state.phase is not Phase.IDLE or not state.adopted:
            return
        _release_ps_versions(state)
        now = self._clock()
        todo = []
        for replica, view in state.views.items():
            if view.error and view.hosting:
                continue  # unreachable: nothing to send to
            desired = state.desired(replica.kind)
            config = state.target.load_config(replica, desired)
            held = {s.version for s in view.versions if s.state in _HELD}
            if config.drop:
                drifted = view.hosting and bool(held)
            else:
                drifted = bool(view.error) or not set(desired) <= held or bool(held - set(desired))
            sent = state.sent.get(replica)
            fresh = sent is None or sent[0] != config
            if fresh or (drifted and now - sent[1] >= self._config.resend_interval_s):  # type: ignore[index]
                if not fresh:
                    logger.warning(
                        "%s@%s drifted (holds %s, wants %s): re-sending its config",
                        replica.sub_graph, replica.address, sorted(held), list(desired),
                    )  # fmt: skip
                todo.append((replica, config))
        await self._send_all(state, todo, now + self._config.timeout_s)


def _served_by_entries(views: Iterable[ReplicaView]) -> set[int]:
    """Versions AVAILABLE on some entry that answered."""
    return {v for view in views if view.replica.kind is ServerKind.ENTRY and not view.error for v in view.available()}


def _held_by_every_backend_shard(views: Iterable[ReplicaView]) -> set[int]:
    """Versions AVAILABLE on some replica of every PS shard seen, and of the dense server when one is seen (a
    shard none of whose replicas answered holds nothing we know of)."""
    by_task: dict[tuple[ServerKind, int], set[int]] = {}
    for view in views:
        if view.replica.kind in BACKEND:
            key = (view.replica.kind, view.replica.task)
            by_task.setdefault(key, set()).update(() if view.error else view.available())
    shards = iter(by_task.values())
    common = set(next(shards, set()))
    for held in shards:
        common &= held
    return common


def _available_on(views: Iterable[ReplicaView], kind: ServerKind) -> set[int]:
    """Versions AVAILABLE on some answering replica of ``kind``."""
    return {v for view in views if view.replica.kind is kind and not view.error for v in view.available()}


def adoptable_version(
    views: Sequence[ReplicaView], persisted_serving: int | None, failed: Collection[int] = ()
) -> int | None:
    """The version a (re)started manager takes as serving (see ``RolloutCoordinator.adopt``); None when no
    replica that answered has a version AVAILABLE that has not ``failed`` (a version still loading, or one whose
    rollout failed, is not what serves: adopting it would push it to every replica outside the PS-first order)."""
    complete = (_served_by_entries(views) & _held_by_every_backend_shard(views)) - set(failed)
    if persisted_serving in complete:
        return persisted_serving
    if complete:
        return max(complete)
    on_entries = _available_on(views, ServerKind.ENTRY) - set(failed)
    on_ps = _available_on(views, ServerKind.PS) - set(failed)
    if persisted_serving is not None and persisted_serving in on_entries | on_ps:
        return persisted_serving
    for available in (on_entries, on_ps):
        if available:
            return max(available)
    return None


def _release_ps_versions(state: ModelState) -> None:
    """Drops the versions adoption kept on the PS for entries that served them, once every entry serves only
    its desired versions (an unreachable entry might still serve one: then nothing is dropped)."""
    wanted = set(state.entry_versions)
    if not wanted or set(state.ps_versions) <= wanted:
        return
    entries = [v for v in state.views.values() if v.replica.kind is ServerKind.ENTRY]
    if all((not v.error or not v.hosting) and v.available() <= wanted for v in entries):
        logger.info("%s: entries settled on %s; PS released %s", state.target.name, sorted(wanted),
                    sorted(set(state.ps_versions) - wanted))  # fmt: skip
        state.ps_versions = state.entry_versions


def _listener(on_phase: PhaseListener | None) -> PhaseListener:
    """``on_phase`` with its errors logged: persisting the state must never break a rollout."""

    async def notify() -> None:
        if on_phase is None:
            return
        try:
            await on_phase()
        except Exception:
            logger.exception("rollout phase listener failed")

    return notify
