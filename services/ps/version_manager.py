"""Which versions of which sub-models are loaded: the load/unload state machine (no gRPC here).

Per sub-model and version: START -> LOADING -> AVAILABLE -> UNLOADING -> END, or LOADING -> END with an
error. A new version loads beside the serving one (in a worker thread, so the event loop keeps answering
lookups); the old versions the policy no longer wants are unloaded only once a wanted version is AVAILABLE,
so a corrupt dump leaves the previous version serving.

Thread-safety: every method runs on the event loop; the only work handed to a thread is reading dump files
into a fresh TableSet nobody else can see yet. Publishing a version (replaying the parameter-sync updates
that arrived while it loaded, then marking it AVAILABLE) happens in one synchronous step on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from monolith_serving.core.errors import MonolithServingError, NotFoundError
from monolith_serving.core.export_layout import PolicyKind, list_versions, version_dir
from monolith_serving.core.model_state import ModelState, choose_version, served_model
from monolith_serving.ps.config import SubModelConfig
from monolith_serving.ps.loader import load_version
from monolith_serving.ps.metrics import PsMetrics
from monolith_serving.ps.sync import TableUpdate
from monolith_serving.ps.table_store import TableSet

logger = logging.getLogger(__name__)


State = ModelState  # the PS names it State throughout


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error: BaseException | None = None  # set only for END after a failed load


@dataclass(eq=False)
class ServableVersion:
    """One version of one sub-model. ``tables`` is set exactly while AVAILABLE."""

    version: int
    state: State = State.START
    error: BaseException | None = None
    tables: TableSet | None = None
    # Validated parameter-sync batches received while LOADING, replayed when the version is published.
    pending: list[list[TableUpdate]] = field(default_factory=list)


@dataclass(eq=False)
class SubModel:
    config: SubModelConfig
    versions: dict[int, ServableVersion] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def name(self) -> str:
        return self.config.name

    def serving(self) -> ServableVersion | None:
        """The newest AVAILABLE version (what unpinned requests get)."""
        available = [v for v in self.versions.values() if v.state is State.AVAILABLE]
        return max(available, key=lambda v: v.version) if available else None

    def loading(self) -> list[ServableVersion]:
        return [v for v in self.versions.values() if v.state in (State.START, State.LOADING)]


Loader = Callable[[SubModelConfig, int], TableSet]
ReplayFn = Callable[[TableSet, list[TableUpdate], str], None]


def _load_from_disk(config: SubModelConfig, version: int) -> TableSet:
    return load_version(version_dir(config.base_path, version), config.partition)


class VersionStateManager:
    """Loads, publishes and unloads sub-model versions per policy. ``update()`` steps are serialised per model."""

    def __init__(
        self,
        *,
        metrics: PsMetrics,
        executor: Executor,
        replay: ReplayFn,
        loader: Loader = _load_from_disk,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._executor = executor
        self._replay = replay
        self._loader = loader
        self._clock = clock
        self.models: dict[str, SubModel] = {}

    # ------------------------------------------------------------------ queries (synchronous)

    def model(self, name: str) -> SubModel:
        return served_model(self.models, name)

    def resolve(self, name: str, version: int | None = None, label: str = "") -> tuple[SubModel, ServableVersion]:
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

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        model = self.model(name)
        versions = sorted(model.versions.values(), key=lambda v: -v.version)
        if version is not None:
            versions = [v for v in versions if v.version == version]
            if not versions:
                raise NotFoundError(f"model {name!r} has no version {version}")
        return [VersionStatus(v.version, v.state, v.error) for v in versions]

    # ------------------------------------------------------------------ changes

    async def apply_config(self, configs: Sequence[SubModelConfig], *, fresh: bool = False) -> None:
        """Makes the hosted sub-models exactly ``configs`` and loads/unloads versions accordingly.

        ``fresh`` (an explicit reload) lets latest_once choose again and retries versions that failed.
        Returns once every model's versions are settled (loaded or failed).
        """
        wanted = {c.name: c for c in configs}
        for name in sorted(set(self.models) - set(wanted)):
            model = self.models.pop(name)
            async with model.lock:
                for servable in list(model.versions.values()):
                    self._unload(model, servable)
            logger.info("model %s removed from the config: unloaded", name)
        for name, config in wanted.items():
            existing = self.models.get(name)
            changed = existing is None or existing.config != config
            model = existing if existing is not None else SubModel(config)
            self.models[name] = model
            model.config = config
            await self.update(model, fresh=fresh or changed)

    async def refresh(self) -> None:
        """One file-system poll: picks up new versions of every hosted model."""
        for model in list(self.models.values()):
            await self.update(model)

    async def update(self, model: SubModel, *, fresh: bool = False) -> None:
        async with model.lock:
            try:
                on_disk = list_versions(model.config.base_path)
            except NotFoundError as error:
                logger.warning("model %s: %s", model.name, error.message)
                on_disk = []
            policy = model.config.policy
            held = [v.version for v in model.versions.values() if v.state in (State.LOADING, State.AVAILABLE)]
            desired = policy.choose(on_disk, () if fresh else held)
            for version in sorted(desired, reverse=True):  # newest first: it is what unpinned requests want
                known = model.versions.get(version)
                if known is None or (fresh and known.state is State.END):
                    await self._load(model, version)
            # Old versions go only once a wanted one is AVAILABLE (a failed load keeps the old one serving),
            # except under an explicit empty ``specific {}``: that means "serve nothing" (the model manager
            # uses it to undo a failed first rollout), so everything is unloaded.
            serve_nothing = policy.kind is PolicyKind.SPECIFIC and not policy.versions
            if serve_nothing or any(model.versions[v].state is State.AVAILABLE for v in desired if v in model.versions):
                for servable in list(model.versions.values()):
                    if servable.version not in desired and servable.state is State.AVAILABLE:
                        self._unload(model, servable)

    async def close(self) -> None:
        for model in self.models.values():
            for servable in list(model.versions.values()):
                if servable.state is State.AVAILABLE:
                    self._unload(model, servable)

    async def _load(self, model: SubModel, version: int) -> None:
        servable = ServableVersion(version)
        model.versions[version] = servable
        self._set_state(model, servable, State.START)
        self._set_state(model, servable, State.LOADING)
        logger.info("model %s version %d: loading", model.name, version)
        started = self._clock()
        loop = asyncio.get_running_loop()
        try:
            tables = await loop.run_in_executor(self._executor, self._loader, model.config, version)
            # Publish in one synchronous step: no lookup or sync can run between replay and AVAILABLE.
            for batch in servable.pending:
                self._replay(tables, batch, model.name)
        except Exception as error:
            servable.pending = []
            servable.error = error
            self._set_state(model, servable, State.END)
            self._metrics.load_failures.labels(model.name).inc()
            message = error.message if isinstance(error, MonolithServingError) else f"{type(error).__name__}: {error}"
            logger.error("model %s version %d: load failed: %s", model.name, version, message)
            return
        servable.pending = []
        servable.tables = tables
        self._set_state(model, servable, State.AVAILABLE)
        elapsed = self._clock() - started
        self._metrics.load_duration.labels(model.name).observe(elapsed)
        for name, table in tables.tables.items():
            self._metrics.table_rows.labels(model.name, str(version), name).set(table.rows)
            self._metrics.table_bytes.labels(model.name, str(version), name).set(table.nbytes)
        logger.info(
            "model %s version %d: AVAILABLE in %.2f s (%d tables, %d rows, %d bytes)",
            model.name, version, elapsed, len(tables.tables), tables.rows, tables.nbytes,
        )  # fmt: skip

    def _unload(self, model: SubModel, servable: ServableVersion) -> None:
        self._set_state(model, servable, State.UNLOADING)
        tables = list(servable.tables.tables) if servable.tables is not None else []
        servable.tables = None
        servable.pending = []
        self._set_state(model, servable, State.END)
        self._metrics.forget_version(model.name, servable.version, tables)
        logger.info("model %s version %d: unloaded", model.name, servable.version)

    def _set_state(self, model: SubModel, servable: ServableVersion, state: State) -> None:
        servable.state = state
        self._metrics.version_state.labels(model.name, str(servable.version)).set(int(state))
