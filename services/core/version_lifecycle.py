"""Which versions of which hosted models are loaded: the load/unload state machine of the PS and the dense server.

Per model and version: START -> LOADING -> AVAILABLE -> UNLOADING -> END, or LOADING -> END with the error. A new
version loads on a worker thread beside the serving one, so the event loop keeps answering; the versions the policy
no longer wants are unloaded only once a wanted version is AVAILABLE, so a broken export leaves the previous version
serving. A failed version is retried only on an explicit reload (``fresh``).
Of the ended versions the policy no longer wants, the newest ``ENDED_VERSIONS_KEPT`` stay in the status; older
ones are forgotten with their state series. A model removed from the config leaves no series behind: its versions'
go as above, its failure count here, the rest through ``hooks.removed``.

What differs between servers comes in as ``LifecycleHooks``: how a version is read (PS: hash-table dumps into a
TableSet; dense: a network), what is replayed into it before it is published (PS: parameter-sync batches that
arrived while it loaded), and the metrics of a loaded version beyond the state gauge and failure counter that
every server keeps (``VersionMetrics``).

Thread-safety: every method runs on the event loop; only ``hooks.load`` runs on the executor, into an object nobody
else sees until it is published. Publishing (``hooks.publish``, then AVAILABLE) is one synchronous step on the loop,
so no request can run between the replay and the switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from monolith_serving.core.errors import (
    FailedPreconditionError,
    MonolithServingError,
    NotFoundError,
    UnavailableError,
)
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy, list_versions
from monolith_serving.core.model_state import ENDED_VERSIONS_KEPT, ModelState, choose_version, served_model
from monolith_serving.core.run_to_end import run_to_end

logger = logging.getLogger(__name__)


class HostedConfig(Protocol):
    """A hosted model's configuration: where its versions are and which to serve."""

    @property
    def name(self) -> str: ...

    @property
    def base_path(self) -> Path: ...

    @property
    def policy(self) -> VersionPolicy: ...

    @property
    def version_labels(self) -> Mapping[str, int]: ...


C = TypeVar("C", bound=HostedConfig)
L = TypeVar("L")  # one loaded version (a TableSet, a dense network)
U = TypeVar("U")  # what arrives for a version while it loads and is replayed into it (PS: sync batches)


@dataclass(eq=False)
class Servable(Generic[L, U]):
    """One version of one model. ``loaded`` is set exactly while AVAILABLE."""

    version: int
    state: ModelState = ModelState.START
    error: MonolithServingError | None = None  # set only for END after a failed load
    loaded: L | None = None
    pending: list[U] = field(default_factory=list)  # handed to ``hooks.publish``, then emptied
    pending_bytes: int = 0  # the size of ``pending`` as its owner counts it (to bound it); emptied with it
    # Set by the owner once ``pending`` outgrew its bound: the queue was dropped and nothing more is queued, so
    # the version is published without what arrived during its load (logged then).
    pending_overflowed: bool = False

    def require_loaded(self) -> L:
        if self.loaded is None:  # cannot happen for an AVAILABLE version; guards the type
            raise NotFoundError(f"version {self.version} is not loaded")
        return self.loaded


@dataclass(eq=False)
class HostedModel(Generic[C, L, U]):
    config: C
    versions: dict[int, Servable[L, U]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # serialises the steps of ``update``
    base_path_missing: bool = False  # at the last poll; its warning is logged once per absence, not every poll

    @property
    def name(self) -> str:
        return self.config.name

    def serving(self) -> Servable[L, U] | None:
        """The newest AVAILABLE version (what unpinned requests get)."""
        available = [v for v in self.versions.values() if v.state is ModelState.AVAILABLE]
        return max(available, key=lambda v: v.version) if available else None

    def loading(self) -> list[Servable[L, U]]:
        return [v for v in self.versions.values() if v.state in (ModelState.START, ModelState.LOADING)]


@dataclass(frozen=True)
class LifecycleHooks(Generic[C, L, U]):
    load: Callable[[C, int], L]
    """Reads one version (blocking; runs on the executor). Any exception makes the version END with it."""
    published: Callable[[str, int, L, float], str]
    """(model, version, loaded, seconds the load took) once AVAILABLE: records metrics, returns what the
    log line says of the version."""
    unloaded: Callable[[str, int, L | None], None] = lambda model, version, loaded: None
    """(model, version, what it held) after an unload; to drop the version's metrics."""
    removed: Callable[[str], None] = lambda model: None
    """(model) once it has left the config and its versions are unloaded; to drop the rest of its metrics."""
    publish: Callable[[L, list[U], str], None] | None = None
    """(loaded, pending, model): replays what arrived while the version loaded, on the loop, just before
    AVAILABLE. An exception fails the load. None: nothing arrives while a version loads."""


class _Labelled(Protocol):
    def labels(self, *values: str) -> Any: ...

    def remove(self, *values: str) -> None: ...


class VersionMetrics(Protocol):
    """The two metrics every server's versions keep (PsMetrics and DenseMetrics both have them)."""

    @property
    def version_state(self) -> _Labelled:
        """Gauge {model, version}: the version's ModelState number."""

    @property
    def load_failures(self) -> _Labelled:
        """Counter {model}: versions that failed to load."""


class VersionLifecycle(Generic[C, L, U]):
    """Loads, publishes and unloads the versions of the hosted models per their policies."""

    def __init__(
        self,
        *,
        hooks: LifecycleHooks[C, L, U],
        metrics: VersionMetrics,
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
        ended_kept: int = ENDED_VERSIONS_KEPT,
    ) -> None:
        self._hooks = hooks
        self._ended_kept = ended_kept
        self._metrics = metrics
        self._executor = executor
        self._clock = clock
        self.models: dict[str, HostedModel[C, L, U]] = {}
        # Config changes and polls run as tasks of their own (see ``_run_to_end``); kept here so that none is
        # garbage-collected mid-load and ``close`` can wait for them.
        self._changes: set[asyncio.Task[None]] = set()
        # Config changes run one at a time, as TF Serving's reloads do. Two interleaved ones could remove a model
        # and add it again under the same name; the removal, still waiting for the old model's lock, then
        # forgot the metric series that the re-added model had just set (they are keyed by name and version).
        self._config_lock = asyncio.Lock()

    # ------------------------------------------------------------------ queries (synchronous)

    def model(self, name: str) -> HostedModel[C, L, U]:
        return served_model(self.models, name)

    def resolve(
        self, name: str, version: int | None = None, label: str = ""
    ) -> tuple[HostedModel[C, L, U], Servable[L, U]]:
        """The version a request gets: pinned (by number or label) or the newest AVAILABLE."""
        model = self.model(name)
        chosen = choose_version(
            name,
            versions=model.versions,
            serving=model.serving(),
            labels=model.config.version_labels,
            version=version,
            label=label,
        )
        return model, chosen

    def status(self, name: str, version: int | None = None) -> list[Servable[L, U]]:
        """Newest first; NOT_FOUND for an unknown model or version."""
        versions = sorted(self.model(name).versions.values(), key=lambda v: -v.version)
        if version is not None:
            versions = [v for v in versions if v.version == version]
            if not versions:
                raise NotFoundError(f"model {name!r} has no version {version}")
        return versions

    # ------------------------------------------------------------------ changes

    async def apply_config(self, configs: Sequence[C], *, fresh: bool = False) -> None:
        """Makes the hosted models exactly ``configs`` and loads/unloads versions accordingly.

        ``fresh`` (an explicit reload) lets latest_once choose again and retries versions that failed; a
        model whose config changed is treated as fresh. Returns once every model's versions are settled.
        The change runs to its end even when the caller is cancelled (see ``_run_to_end``).
        """
        await self._run_to_end(self._apply_config(configs, fresh=fresh), "config change")

    async def refresh(self) -> None:
        """One file-system poll: picks up new versions of every hosted model."""
        await self._run_to_end(self._refresh(), "file-system poll")

    async def _run_to_end(self, change: Coroutine[Any, Any, None], what: str) -> None:
        """``change`` run to its end even if the caller stops waiting (``core.run_to_end``: a change cancelled
        half-way would leave a version LOADING for good, parameter-sync batches queueing on it)."""
        await run_to_end(change, what, self._changes)

    async def _apply_config(self, configs: Sequence[C], *, fresh: bool) -> None:
        async with self._config_lock:
            await self._apply_config_alone(configs, fresh=fresh)

    async def _apply_config_alone(self, configs: Sequence[C], *, fresh: bool) -> None:
        wanted = {c.name: c for c in configs}
        for name in sorted(set(self.models) - set(wanted)):
            model = self.models.pop(name)
            async with model.lock:  # a poll may be loading one of its versions
                for servable in list(model.versions.values()):
                    self._unload(model, servable)
                    self._forget_state_series(model.name, servable.version)
                self._forget_model_series(name)
            logger.info("model %s removed from the config: unloaded", name)
        for name, config in wanted.items():
            existing = self.models.get(name)
            changed = existing is None or existing.config != config
            model = existing if existing is not None else HostedModel(config)
            self.models[name] = model
            model.config = config
            await self.update(model, fresh=fresh or changed)

    async def _refresh(self) -> None:
        for model in list(self.models.values()):
            await self.update(model)

    async def update(self, model: HostedModel[C, L, U], *, fresh: bool = False) -> None:
        async with model.lock:
            if self.models.get(model.name) is not model:
                # Removed by a config change while this poll waited for the lock: loading it now would
                # leave versions and metrics behind that nothing ever unloads.
                return
            try:
                on_disk = list_versions(model.config.base_path)
            except NotFoundError as error:
                if not model.base_path_missing:
                    logger.warning("model %s: %s (not logged again until it appears)", model.name, error.message)
                model.base_path_missing = True
                on_disk = []
            else:
                if model.base_path_missing:
                    logger.info("model %s: base path %s is there again", model.name, model.config.base_path)
                model.base_path_missing = False
            config = model.config
            policy = config.policy
            held = [v.version for v in model.versions.values() if v.state in (ModelState.LOADING, ModelState.AVAILABLE)]
            desired = policy.choose(on_disk, () if fresh else held)
            for version in sorted(desired, reverse=True):  # newest first: it is what unpinned requests want
                known = model.versions.get(version)
                if known is None or (fresh and known.state is ModelState.END):
                    await self._load(model, version)
            if model.config is not config:
                # A config change arrived while this step loaded (a reload racing a poll). What it keeps may be
                # outside this step's ``desired``; its own step, waiting for the lock, unloads by the new policy.
                return
            # Old versions go only once a wanted one is AVAILABLE (a failed load keeps the old one serving),
            # except under an explicit empty ``specific {}``: that means "serve nothing" (the model manager
            # uses it to undo a failed first rollout), so everything is unloaded.
            serve_nothing = policy.kind is PolicyKind.SPECIFIC and not policy.versions
            settled = any(model.versions[v].state is ModelState.AVAILABLE for v in desired if v in model.versions)
            if serve_nothing or settled:
                for servable in list(model.versions.values()):
                    if servable.version not in desired:
                        self._unload(model, servable)
            self._forget_old_ended(model, desired)

    async def close(self) -> None:
        for change in list(self._changes):
            change.cancel()
        if self._changes:
            await asyncio.gather(*self._changes, return_exceptions=True)
        for model in self.models.values():
            for servable in list(model.versions.values()):
                self._unload(model, servable)

    async def _load(self, model: HostedModel[C, L, U], version: int) -> None:
        servable: Servable[L, U] = Servable(version)
        model.versions[version] = servable
        self._set_state(model, servable, ModelState.START)
        self._set_state(model, servable, ModelState.LOADING)
        logger.info("model %s version %d: loading", model.name, version)
        started = self._clock()
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(self._executor, self._hooks.load, model.config, version)
            # Publish in one synchronous step: nothing can run between the replay and AVAILABLE.
            if self._hooks.publish is not None:
                self._hooks.publish(loaded, servable.pending, model.name)
            if servable.pending_overflowed:
                logger.warning(
                    "model %s version %d: published without the updates that arrived during its load (its queue "
                    "outgrew its bound): their rows keep the export's values until they are updated again",
                    model.name, version,
                )  # fmt: skip
        except asyncio.CancelledError:
            # Only ``close`` cancels a change (see ``_run_to_end``): end the version rather than leave it LOADING.
            servable.pending, servable.pending_bytes = [], 0
            servable.error = UnavailableError("load cancelled: the server is shutting down")
            self._set_state(model, servable, ModelState.END)
            raise
        except Exception as exc:  # any broken export must end as END with its reason, never crash the loop
            error = _load_error(exc)
            servable.pending, servable.pending_bytes = [], 0
            servable.error = error
            self._set_state(model, servable, ModelState.END)
            self._metrics.load_failures.labels(model.name).inc()
            logger.error("model %s version %d: load failed: %s", model.name, version, error.message)
            return
        servable.pending, servable.pending_bytes = [], 0
        servable.loaded = loaded
        self._set_state(model, servable, ModelState.AVAILABLE)
        elapsed = self._clock() - started
        described = self._hooks.published(model.name, version, loaded, elapsed)
        logger.info("model %s version %d: AVAILABLE in %.2f s (%s)", model.name, version, elapsed, described)

    def _unload(self, model: HostedModel[C, L, U], servable: Servable[L, U]) -> None:
        if servable.state is not ModelState.AVAILABLE:
            return
        self._set_state(model, servable, ModelState.UNLOADING)
        held, servable.loaded = servable.loaded, None
        self._set_state(model, servable, ModelState.END)
        self._hooks.unloaded(model.name, servable.version, held)
        logger.info("model %s version %d: unloaded", model.name, servable.version)

    def _forget_old_ended(self, model: HostedModel[C, L, U], desired: Sequence[int]) -> None:
        """Forgets all but the newest ``ended_kept`` ended versions that the policy no longer wants. A wanted one
        stays whatever its state: forgotten, a failed version would be loaded again on the next poll."""
        ended = sorted(
            (v for v, s in model.versions.items() if s.state is ModelState.END and v not in desired), reverse=True
        )
        for version in ended[self._ended_kept :]:
            del model.versions[version]
            self._forget_state_series(model.name, version)

    def _forget_state_series(self, model: str, version: int) -> None:
        with contextlib.suppress(KeyError):  # a series never set
            self._metrics.version_state.remove(model, str(version))

    def _forget_model_series(self, model: str) -> None:
        with contextlib.suppress(KeyError):  # never failed a load
            self._metrics.load_failures.remove(model)
        self._hooks.removed(model)

    def _set_state(self, model: HostedModel[C, L, U], servable: Servable[L, U], state: ModelState) -> None:
        servable.state = state
        self._metrics.version_state.labels(model.name, str(servable.version)).set(int(state))


def _load_error(exc: Exception) -> MonolithServingError:
    """A load failure as GetModelStatus reports it: our own errors keep their code; anything else (a reader's
    ValueError on a corrupt file, an OSError) is FAILED_PRECONDITION with its type and text."""
    return exc if isinstance(exc, MonolithServingError) else FailedPreconditionError(f"{type(exc).__name__}: {exc}")
