"""The model manager's control loop: notice versions, receive them, roll them out, keep replicas in line.

One ``step()`` per model and per ``scan_interval_s``, each part isolated (an exception is logged with its
traceback, counted and timed into ``monolith_model_manager_control_step_seconds``; it never stops the loop):

``scan`` the source → ``receive`` the newest complete version (p2p / remote sources) → ``observe`` every
replica (and close connections to addresses no longer listed; adopt what serves after a restart) →
``rollout`` (or a requested rollback) → ``reconcile`` drifted replicas → ``retention`` → gauges →
``persist`` the rollout state when it changed.

With discovery (``recorder``), the failed versions, the rollback pin and the serving version (preferred when
adopting, see ``RolloutCoordinator.adopt``) survive a restart: they are read
back from the rollout-state node (``registry_state.py``) before the model's first rollout — no automatic
rollout happens until that read succeeded — and every rollout first declares the model (v3) and writes
its target and phase; a rollout whose declaration or state cannot be written does not start.

Automatic rollouts only move forward, to the newest complete version that has not failed with its current
fingerprint. Only a load error fails a version; a rollout that timed out (e.g. a replica unreachable for a
while) is retried after ``retry_after_timeout_s``, doubling with each consecutive timeout of that version up
to ``retry_after_timeout_max_s`` (retries never stop while the version is the newest; they are not persisted:
a restarted manager tries at once). A rollback pins the model: it is not rolled forward again until a
version newer than every version present at rollback time appears. Everything runs on one asyncio task
except the HTTP status thread, which reads the immutable ``snapshot()`` and hands rollback requests over
with ``asyncio.run_coroutine_threadsafe``.

Per-version bookkeeping (first seen, failed, copy failures, timeout retries) is bounded: after each scan the
entries of versions older than every version in the source and the local folder are dropped (see
``_forget``), so the dicts and the persisted ``failed`` map follow the retention of the source and of the
receive folder instead of growing with every version ever seen.

``run`` returns within seconds of ``stop`` (SIGTERM/SIGINT), whatever a step is doing: a rollout may wait up to
``--rollout_timeout_s`` on its replicas, so the running step is cancelled where it awaits. An interrupted
rollout leaves the replicas as they are (every state a rollout passes through is free of mixed versions) and
its persisted phase non-idle; the next start decides it again from what the replicas serve (``_restore``,
``RolloutCoordinator.adopt``). A rollback interrupted once every entry had switched is pinned before the
process ends, so the next start does not roll forward past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import Gauge

from monolith_serving.core.aio_wait import within
from monolith_serving.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MonolithServingError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from monolith_serving.core.export_layout import list_versions
from monolith_serving.model_manager.fs import LocalFileSystem
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.p2p_copy import VersionCopier, received_versions
from monolith_serving.model_manager.registry_state import RegistryRecorder, RollbackPin, RolloutState
from monolith_serving.model_manager.retention import prune
from monolith_serving.model_manager.rollout import (
    AbortCause,
    ModelState,
    Outcome,
    Phase,
    RolloutCoordinator,
    RolloutRecord,
)
from monolith_serving.model_manager.sources import VersionCandidate, VersionSource, read_entry_spec
from monolith_serving.model_manager.status import model_status, record_json

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Once stopping: how long the cancelled step may take to unwind, and to save a rollback's pin meanwhile. The
# deployments' grace periods (Helm terminationGracePeriodSeconds 30, compose stop_grace_period 20 s) cover both
# plus closing the discovery connection.
_STOP_WAIT_S = 10.0
_SAVE_ON_STOP_S = 5.0


@dataclass(frozen=True)
class ManagerConfig:
    scan_interval_s: float = 2.0
    keep_versions: int = 5
    copy_retry_s: float = 60.0  # after a failed copy (disk full ...), wait this long before retrying it
    retry_after_timeout_s: float = 30.0  # after a rollout timed out, wait this long before trying it again...
    retry_after_timeout_max_s: float = 600.0  # ...doubling per consecutive timeout up to this

    def __post_init__(self) -> None:
        if not 0 < self.retry_after_timeout_s <= self.retry_after_timeout_max_s:
            raise InvalidArgumentError("need 0 < --retry_after_timeout_s <= --retry_after_timeout_max_s")


@dataclass(frozen=True)
class TimeoutRetry:
    """A version whose rollout timed out ``attempts`` times in a row; tried again from ``at_s`` (monotonic)."""

    attempts: int
    at_s: float


@dataclass
class ManagedModel:
    """Per-model bookkeeping next to the coordinator's ``ModelState``."""

    source: VersionSource
    state: ModelState
    num_ps_fixed: bool  # --num_ps given: do not read it from serving specs
    candidates: dict[int, VersionCandidate] = field(default_factory=dict)
    first_seen_s: dict[int, float] = field(default_factory=dict)  # version -> wall clock
    failed: dict[int, str] = field(default_factory=dict)  # version -> fingerprint it failed with
    copy_failed_at: dict[int, float] = field(default_factory=dict)  # version -> monotonic
    timeout_retries: dict[int, TimeoutRetry] = field(default_factory=dict)  # version -> when to roll out again
    hold_floor: int | None = None  # after a rollback: only versions above this roll out automatically
    pinned: int | None = None  # the version the last rollback went to (while hold_floor applies)
    restored: bool = False  # the persisted state was read (or there is no recorder)
    saved: dict[str, Any] | None = None  # content last written to the registry
    previous_rollout: dict[str, Any] | None = None  # the last rollout of a previous run (from the registry)
    previous_serving: int | None = None  # the version a previous run committed as serving (from the registry)
    local_versions: tuple[int, ...] = ()  # complete versions replicas can load
    all_answered: bool = False

    @property
    def name(self) -> str:
        return self.state.target.name


class ModelManager:
    def __init__(
        self,
        *,
        models: list[ManagedModel],
        coordinator: RolloutCoordinator,
        copier: VersionCopier | None,
        config: ManagerConfig,
        metrics: ModelManagerMetrics,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        recorder: RegistryRecorder | None = None,
    ) -> None:
        self._models = {m.name: m for m in models}
        self._recorder = recorder
        if recorder is None:
            for model in models:
                model.restored = True
        self._coordinator = coordinator
        for model in models:
            # Before any rollout: a reload to a container shared by several models must name them all.
            coordinator.track(model.state)
        self._copier = copier
        self._config = config
        self._metrics = metrics
        for model in models:
            # At 0 from the start: an alert on increase() cannot see a counter born at its first abort.
            metrics.rollout_failures.labels(model.name)
        self._wall = wall
        self._clock = clock
        # At most one rollback per model is pending (queued or running), so the queue is bounded by the models.
        self._rollbacks: asyncio.Queue[tuple[str, int, asyncio.Future[RolloutRecord]]] = asyncio.Queue(
            maxsize=len(self._models)
        )
        self._pending_rollbacks: dict[str, int] = {}  # model -> version of its pending rollback
        self._snapshot: dict[str, Any] = {"models": {}}
        # Per model, the sub_graphs that have a serving_version series (removed when they stop having a version).
        self._serving_series: dict[str, set[str]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ loop

    async def run(self, stop: asyncio.Event) -> None:
        """Steps every ``scan_interval_s`` until ``stop`` is set, then returns within ``_STOP_WAIT_S``: a step
        still running is cancelled (see the module docstring). Rollback requests still pending then fail with
        UnavailableError (HTTP 503)."""
        self.loop = asyncio.get_running_loop()
        try:
            if self._copier is not None:
                for model in self._models.values():
                    recover = self._timed("recover", lambda m=model: self._recover(m))  # type: ignore[misc]
                    if not await self._unless_stopped(recover, stop):
                        return
            while not stop.is_set():
                if not await self._unless_stopped(self.step(), stop):
                    return
                with contextlib.suppress(TimeoutError):
                    await within(self._wait_for_work(stop), self._config.scan_interval_s)
        finally:
            self._refuse_pending_rollbacks()

    async def _unless_stopped(self, work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
        """Runs ``work`` to its end (True), or until ``stop`` is set (False): it is then cancelled and awaited
        at most ``_STOP_WAIT_S``."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            stopping.cancel()
        if task.done():
            task.result()  # ``_timed`` keeps step errors in; anything else is a bug that must not be lost
            return True
        rolling = [
            f"{m.name}: {m.state.phase.value} of version {m.state.rolling_to}"
            for m in self._models.values()
            if m.state.rolling_to is not None
        ]
        logger.warning(
            "model-manager stopping: interrupting the control step in progress (%s)",
            "; ".join(rolling) or "no rollout running",
        )
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=_STOP_WAIT_S)
        if not done:
            logger.error("the interrupted control step did not end within %.0f s; stopping anyway", _STOP_WAIT_S)
        elif not task.cancelled() and task.exception() is not None:
            logger.error("the interrupted control step failed", exc_info=task.exception())
        return False

    def _refuse_pending_rollbacks(self) -> None:
        while not self._rollbacks.empty():
            name, version, future = self._rollbacks.get_nowait()
            if not future.done():
                future.set_exception(_stopped_error(name, version))
        self._pending_rollbacks.clear()

    async def _wait_for_work(self, stop: asyncio.Event) -> None:
        """Returns early when stopping or when a rollback request is queued."""
        while not stop.is_set() and self._rollbacks.empty():
            await asyncio.sleep(0.05)

    async def _recover(self, model: ManagedModel) -> None:
        assert self._copier is not None
        await asyncio.get_running_loop().run_in_executor(None, self._copier.recover, model.name)

    async def _timed(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        started = time.monotonic()
        try:
            await step()
        except Exception:
            # An unhandled error must never halt the control loop.
            logger.exception("model-manager step %s failed", name)
            self._metrics.control_step_errors.labels(name).inc()
        self._metrics.control_step_seconds.labels(name).set(time.monotonic() - started)

    async def step(self) -> None:
        for model in self._models.values():
            if not model.restored:
                await self._timed("restore", lambda m=model: self._restore(m))  # type: ignore[misc]
            await self._timed("scan", lambda m=model: self._scan(m))  # type: ignore[misc]
            await self._timed("receive", lambda m=model: self._receive(m))  # type: ignore[misc]
            await self._timed("observe", lambda m=model: self._observe(m))  # type: ignore[misc]
        await self._timed("rollback", self._serve_rollbacks)
        for model in self._models.values():
            await self._timed("rollout", lambda m=model: self._auto_rollout(m))  # type: ignore[misc]
            await self._timed("reconcile", lambda m=model: self._coordinator.reconcile(m.state))  # type: ignore[misc]
            await self._timed("retention", lambda m=model: self._retention(m))  # type: ignore[misc]
        await self._timed("publish", self._publish)
        for model in self._models.values():
            await self._timed("persist", lambda m=model: self._persist(m))  # type: ignore[misc]

    # ------------------------------------------------------------------ steps

    async def _scan(self, model: ManagedModel) -> None:
        loop = asyncio.get_running_loop()
        candidates = await loop.run_in_executor(None, model.source.scan)
        model.candidates = {c.version: c for c in candidates}
        now = self._wall()
        for version in model.candidates:
            model.first_seen_s.setdefault(version, now)
        if model.source.needs_copy:
            assert self._copier is not None
            model_dir = self._copier.model_dir(model.name)
            num_ps = model.state.target.num_ps if model.num_ps_fixed else None  # else each version's own spec
            received = await loop.run_in_executor(None, received_versions, model_dir, num_ps)
            model.local_versions = tuple(received)
        else:
            model.local_versions = tuple(sorted(model.candidates))
        if candidates:
            self._metrics.newest_version.labels(model.name).set(max(model.candidates))
        self._forget(model)

    def _forget(self, model: ManagedModel) -> None:
        """Drops the per-version entries of versions older than every version present (in the source or the
        local folder); with nothing present, nothing is forgotten (a source that lists nothing for a while).

        No decision changes: only local versions roll out and ``first_seen_s`` is read for the newest present
        version, so a version present at every scan keeps all its entries. One that left both the source and
        the local folder and later comes back older than everything present counts as new. A failed version
        is also kept while the desired config or some replica holds it (``adopt`` must never take it), and no
        failed version is forgotten while some replica's holdings are unknown (not every replica answered at
        the last observe, or none was observed yet), like retention."""
        present = set(model.candidates) | set(model.local_versions)
        if not present:
            return
        oldest = min(present)
        _drop_older(model.first_seen_s, oldest)
        _drop_older(model.copy_failed_at, oldest)
        _drop_older(model.timeout_retries, oldest)
        if model.all_answered:
            _drop_older(model.failed, oldest, keep=model.state.in_use())

    def _eligible(self, model: ManagedModel, version: int) -> bool:
        candidate = model.candidates.get(version)
        if candidate is not None and model.failed.get(version) == candidate.fingerprint:
            return False
        if candidate is None and version in model.failed:
            return False
        return model.hold_floor is None or version > model.hold_floor

    async def _receive(self, model: ManagedModel) -> None:
        if not model.source.needs_copy or not model.candidates:
            return
        assert self._copier is not None
        newest = max(model.candidates)
        if newest in model.local_versions or not self._eligible(model, newest):
            return
        failed_at = model.copy_failed_at.get(newest)
        if failed_at is not None and self._clock() - failed_at < self._config.copy_retry_s:
            return
        candidate = model.candidates[newest]
        loop = asyncio.get_running_loop()
        try:
            copied = await loop.run_in_executor(None, self._copier.copy, model.source.fs, candidate)
        except MonolithServingError as error:
            model.copy_failed_at[newest] = self._clock()
            outcome = "disk_full" if isinstance(error, ResourceExhaustedError) else "error"
            self._metrics.copies.labels(model.name, outcome).inc()
            logger.error("%s version %d not received: %s", model.name, newest, error.message)
            return
        model.copy_failed_at.pop(newest, None)
        if copied is not None:
            self._metrics.copies.labels(model.name, "ok").inc()
            self._metrics.copied_bytes.labels(model.name).inc(copied)
        model.local_versions = tuple(sorted({*model.local_versions, newest}))

    async def _observe(self, model: ManagedModel) -> None:
        model.all_answered = await self._coordinator.observe(model.state)
        if model.restored:  # the previous run's serving version, when there is one, is known by now
            await self._coordinator.adopt(model.state, persisted_serving=model.previous_serving, failed=model.failed)

    def _version_dir(self, model: ManagedModel) -> Path:
        return Path(model.state.target.base_dir)

    def _prepare_target(self, model: ManagedModel, version: int) -> None:
        """Reads from the version's serving spec its num_ps (unless --num_ps fixed it) and whether its dense
        network runs in a dense_0 server (dense_alone), which the rollout then waits for beside the PS."""
        spec = read_entry_spec(LocalFileSystem(), str(self._version_dir(model) / "entry" / str(version)))
        target = model.state.target
        num_ps = target.num_ps
        if not model.num_ps_fixed:
            read = spec.num_ps()
            if read is None:
                raise FailedPreconditionError(f"{model.name} version {version}: no readable serving spec")
            num_ps = read
        if (num_ps, spec.remote_dense) != (target.num_ps, target.dense):
            model.state.target = dataclasses.replace(target, num_ps=num_ps, dense=spec.remote_dense)

    async def _rollout(self, model: ManagedModel, version: int, *, rollback: bool) -> RolloutRecord:
        self._prepare_target(model, version)
        if self._recorder is not None:
            # Declared (v3) and announced before any replica is touched; raises (no rollout) if unreachable.
            await self._recorder.declare(model.state.target)
            await self._persist(model, target=version, required=True)
        record = await self._coordinator.rollout(
            model.state, version, rollback=rollback, on_phase=lambda: self._persist(model)
        )
        if record.outcome is Outcome.FAILED and record.cause is AbortCause.TIMED_OUT:
            self._schedule_retry(model, version)
        elif record.outcome is Outcome.FAILED:
            candidate = model.candidates.get(version)
            model.failed[version] = candidate.fingerprint if candidate is not None else ""
        else:
            model.failed.pop(version, None)
            model.timeout_retries.pop(version, None)
            if not rollback:  # rolled forward past the pin (only versions above it roll out): it is spent
                model.pinned = model.hold_floor = None
        await self._publish()
        await self._persist(model)
        return record

    def _schedule_retry(self, model: ManagedModel, version: int) -> None:
        """A timeout says nothing about the version (a replica may have been unreachable for a while): try it
        again later, backing off exponentially (bounded) while it keeps timing out."""
        previous = model.timeout_retries.get(version)
        attempts = 1 if previous is None else previous.attempts + 1
        # The exponent is capped: 2.0 ** 1024 overflows, and a version may time out for weeks (a replica gone).
        doubling = 2.0 ** min(attempts - 1, 32)
        delay_s = min(self._config.retry_after_timeout_s * doubling, self._config.retry_after_timeout_max_s)
        model.timeout_retries[version] = TimeoutRetry(attempts, self._clock() + delay_s)
        logger.warning(
            "%s version %d timed out (%d time(s) in a row); retried in %.0f s", model.name, version, attempts, delay_s
        )

    def _waiting_for_retry(self, model: ManagedModel, version: int) -> bool:
        retry = model.timeout_retries.get(version)
        return retry is not None and self._clock() < retry.at_s

    async def _auto_rollout(self, model: ManagedModel) -> None:
        if not model.restored:
            return  # the failed versions and the pin of a previous run are not known yet
        if not model.state.adopted and any(v.error and v.hosting for v in model.state.views.values()):
            # A replica did not answer and might hold a version: a first rollout's abort would serve nothing.
            return
        eligible = [v for v in model.local_versions if self._eligible(model, v)]
        if not eligible:
            return
        target = max(eligible)
        serving = model.state.serving
        if serving is not None and target <= serving:
            return
        if self._waiting_for_retry(model, target):
            return  # its last rollout timed out; an older version is not rolled out meanwhile
        await self._rollout(model, target, rollback=False)

    async def _retention(self, model: ManagedModel) -> None:
        if not model.source.needs_copy or self._copier is None:
            return  # never delete from a source we do not own
        in_use = model.state.in_use() if model.all_answered and model.state.phase.value == "idle" else None
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(
            None, prune, self._copier.model_dir(model.name), self._config.keep_versions, in_use
        )
        if removed:
            self._metrics.deleted_versions.labels(model.name).inc(len(removed))
            model.local_versions = tuple(v for v in model.local_versions if v not in removed)

    # ------------------------------------------------------------------ rollback requests

    async def request_rollback(self, model: str, version: int) -> RolloutRecord:
        """Queues a rollback to ``version`` and waits for its outcome (runs on the manager's loop).

        At most one rollback per model is pending, from this call until its outcome is known: another request
        for that model fails at once with FailedPreconditionError naming the pending one (HTTP 409)."""
        if model not in self._models:
            raise NotFoundError(f"model {model!r} is not managed here (managed: {sorted(self._models)})")
        pending = self._pending_rollbacks.get(model)
        if pending is not None:
            raise FailedPreconditionError(
                f"a rollback of {model} to version {pending} is already in progress; wait for its outcome "
                "(see /status) before requesting another"
            )
        future: asyncio.Future[RolloutRecord] = asyncio.get_running_loop().create_future()
        self._pending_rollbacks[model] = version
        self._rollbacks.put_nowait((model, version, future))  # never full: one entry per model at most
        return await future

    async def _serve_rollbacks(self) -> None:
        while not self._rollbacks.empty():
            name, version, future = self._rollbacks.get_nowait()
            try:
                if future.done():  # the requester was cancelled while it waited in the queue
                    logger.info("rollback of %s to version %d dropped: its requester is gone", name, version)
                    continue
                record = await self._rollback(self._models[name], version)
                if not future.done():
                    future.set_result(record)
            except asyncio.CancelledError:  # stopping: the requester learns it did not finish
                if not future.done():
                    future.set_exception(_stopped_error(name, version))
                raise
            except Exception as error:  # the requester gets the error; the loop goes on
                if not future.done():
                    future.set_exception(error)
            finally:
                self._pending_rollbacks.pop(name, None)

    async def _rollback(self, model: ManagedModel, version: int) -> RolloutRecord:
        local = self._local_versions_now(model)
        if version not in local:
            raise NotFoundError(f"{model.name} version {version} is not on disk (present: {local})")
        try:
            record = await self._rollout(model, version, rollback=True)
        except asyncio.CancelledError:
            if model.state.serving == version:
                # Stopped after every entry switched (in the PS cleanup): the rollback took effect. Pinned now, or
                # the next start would adopt this version and roll forward again at once.
                self._pin(model, version, local)
                with contextlib.suppress(TimeoutError):
                    await within(self._persist(model), _SAVE_ON_STOP_S)
            raise
        if record.outcome is Outcome.SUCCEEDED:
            self._pin(model, version, local)
            await self._persist(model)
        return record

    def _pin(self, model: ManagedModel, version: int, local: list[int]) -> None:
        model.hold_floor = max([*local, *model.candidates])
        model.pinned = version
        logger.info("%s pinned at version %d until a version above %d appears",
                    model.name, version, model.hold_floor)  # fmt: skip

    def _local_versions_now(self, model: ManagedModel) -> list[int]:
        if model.source.needs_copy:
            return sorted(model.local_versions)
        try:
            return list_versions(self._version_dir(model) / "entry")
        except NotFoundError:
            return []

    # ------------------------------------------------------------------ persisted state

    def _rollout_state(self, model: ManagedModel, target: int | None = None) -> RolloutState:
        state = model.state
        pin = None
        if model.hold_floor is not None and model.pinned is not None:
            pin = RollbackPin(model.pinned, model.hold_floor)
        return RolloutState(
            model=model.name,
            serving=state.serving,
            target=target if target is not None else state.rolling_to,
            phase=state.phase.value if target is None else Phase.PS_LOADING.value,
            failed=dict(model.failed),
            rollback_pin=pin,
            last_rollout=record_json(state.last_rollout) if state.last_rollout else model.previous_rollout,
            updated_at=self._wall(),
        )

    async def _persist(self, model: ManagedModel, *, target: int | None = None, required: bool = False) -> None:
        """Writes the rollout-state node when its content changed. Errors propagate only when ``required``
        (before a rollout); otherwise they are logged and the write is retried on the next step."""
        if self._recorder is None or not model.restored:
            return  # never overwrite a previous run's state before reading it
        record = self._rollout_state(model, target)
        if record.content() == model.saved:
            return
        try:
            await self._recorder.save(record)
        except MonolithServingError as error:
            if required:
                raise
            logger.warning("%s: rollout state not saved (retried next step): %s", model.name, error.message)
            return
        model.saved = record.content()

    async def _restore(self, model: ManagedModel) -> None:
        """Reads the previous run's failed versions and rollback pin (raises while discovery is unreachable;
        the step is retried and automatic rollouts wait)."""
        assert self._recorder is not None
        saved = await self._recorder.load(model.name)
        model.restored = True
        if saved is None:
            return
        model.saved = saved.content()
        model.previous_rollout = saved.last_rollout
        model.previous_serving = saved.serving
        for version, fingerprint in saved.failed.items():
            model.failed.setdefault(version, fingerprint)
        if saved.rollback_pin is not None and model.hold_floor is None:
            model.hold_floor = saved.rollback_pin.hold_floor
            model.pinned = saved.rollback_pin.version
        logger.info(
            "%s: restored state (serving %s, failed %s, pin %s, phase %s, target %s)",
            model.name, saved.serving, sorted(saved.failed), saved.rollback_pin, saved.phase, saved.target,
        )  # fmt: skip
        if saved.phase != Phase.IDLE.value:
            # Whatever point it stopped at, the replicas were free of mixed versions; ``adopt`` then takes what
            # they serve (the persisted version while entries and every PS shard still have it) and the PS keeps
            # every version an entry serves. A forward rollout is then done again (each phase is idempotent); an
            # interrupted rollback is not, its entries go back to the adopted version (request it again).
            logger.warning(
                "%s: the previous run stopped during a rollout to %s (phase %s); it is decided again from "
                "version %s if replicas still serve it",
                model.name, saved.target, saved.phase, saved.serving,
            )  # fmt: skip

    # ------------------------------------------------------------------ status

    async def _publish(self) -> None:
        now = self._wall()
        models = {}
        for model in self._models.values():
            status = model_status(
                state=model.state,
                versions_present=sorted(set(model.local_versions) | set(model.candidates)),
                local_versions=sorted(model.local_versions),
                failed=sorted(model.failed),
                hold_floor=model.hold_floor,
                first_seen_s=model.first_seen_s,
                now_s=now,
            )
            models[model.name] = status
            # A sub_graph without a version (no replica answered, or they share no AVAILABLE version) or no
            # longer listed has no series: 0 would read as "version 0 serves", a stale value as still serving.
            serving = {s: v for s, v in status["serving_version"].items() if v is not None}
            for sub_graph, version in serving.items():
                self._metrics.serving_version.labels(model.name, sub_graph).set(version)
            for sub_graph in sorted(self._serving_series.get(model.name, set()) - serving.keys()):
                _remove_series(self._metrics.serving_version, model.name, sub_graph)
            self._serving_series[model.name] = set(serving)
            self._metrics.version_delay.labels(model.name).set(status["version_delay_seconds"])
            self._metrics.update_delay.labels(model.name).set(status["update_delay_seconds"])
        self._snapshot = {"time": now, "models": models}

    def snapshot(self) -> dict[str, Any]:
        """The last published status (an immutable-by-convention dict; safe to read from any thread)."""
        return self._snapshot


def _stopped_error(model: str, version: int) -> UnavailableError:
    return UnavailableError(
        f"the model manager stopped before the rollback of {model} to version {version} finished; once it is "
        "back, request it again unless /status shows that version serving"
    )


def _drop_older(book: dict[int, _T], oldest: int, keep: set[int] | frozenset[int] = frozenset()) -> None:
    for version in [v for v in book if v < oldest and v not in keep]:
        del book[version]


def _remove_series(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # older prometheus-client versions raise for a missing series
        gauge.remove(*labels)
