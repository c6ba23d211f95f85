"""Which versions of which dense sub-models are loaded (no gRPC here).

Per sub-model and version: START -> LOADING -> AVAILABLE -> END, or LOADING -> END with the error. A new
version loads on a worker thread beside the serving one; versions the policy no longer wants are unloaded
only once a wanted version is AVAILABLE, so a broken export leaves the previous version serving. A failed
version is retried only on an explicit reload (``fresh``), as in the PS.

The PS keeps its own manager (``ps.version_manager``: tables, parameter-sync replay); this one holds a
network per version. Thread-safety: every method runs on the event loop; only the file reading is handed
to the executor, into objects nobody else sees until they are published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from monolith_serving.core.dense_spec import DenseModelSpec, load_dense_model_spec
from monolith_serving.core.errors import (
    FailedPreconditionError,
    MonolithServingError,
    NotFoundError,
)
from monolith_serving.core.export_layout import PolicyKind, list_versions, version_dir
from monolith_serving.core.model_state import ModelState, choose_version, served_model
from monolith_serving.dense.config import DenseModelConfig
from monolith_serving.dense.metrics import DenseMetrics
from monolith_serving.entry.dense import LocalDenseModel, load_dense_network

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenseNetwork:
    """One loaded version: its spec and the network (``entry.dense``'s numpy MLP or ONNX graph)."""

    spec: DenseModelSpec
    network: LocalDenseModel


def load_dense_version(path: Path) -> DenseNetwork:
    """Reads ``dense_spec.json`` and the network it names; every shape is checked here, not per request."""
    spec = load_dense_model_spec(path)
    return DenseNetwork(spec, load_dense_network(spec.dense, spec.input_width, path))


@dataclass(eq=False)
class DenseVersion:
    version: int
    state: ModelState = ModelState.START
    error: MonolithServingError | None = None
    loaded: DenseNetwork | None = None  # set exactly while AVAILABLE


@dataclass(eq=False)
class DenseSubModel:
    config: DenseModelConfig
    versions: dict[int, DenseVersion] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def serving(self) -> DenseVersion | None:
        available = [v for v in self.versions.values() if v.state is ModelState.AVAILABLE]
        return max(available, key=lambda v: v.version) if available else None


Loader = Callable[[Path], DenseNetwork]


class DenseVersionManager:
    def __init__(self, *, metrics: DenseMetrics, executor: Executor, loader: Loader = load_dense_version) -> None:
        self._metrics = metrics
        self._executor = executor
        self._loader = loader
        self.models: dict[str, DenseSubModel] = {}

    # ------------------------------------------------------------------ queries

    def model(self, name: str) -> DenseSubModel:
        return served_model(self.models, name)

    def resolve(self, name: str, version: int | None = None, label: str = "") -> tuple[DenseVersion, DenseNetwork]:
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
        assert chosen.loaded is not None  # AVAILABLE implies loaded
        return chosen, chosen.loaded

    def status(self, name: str, version: int | None = None) -> list[DenseVersion]:
        """Newest first; NOT_FOUND for an unknown model or version."""
        versions = sorted(self.model(name).versions.values(), key=lambda v: -v.version)
        if version is not None:
            versions = [v for v in versions if v.version == version]
            if not versions:
                raise NotFoundError(f"model {name!r} has no version {version}")
        return versions

    # ------------------------------------------------------------------ changes

    async def apply_config(self, configs: Sequence[DenseModelConfig], *, fresh: bool = False) -> None:
        """Makes the hosted models exactly ``configs``; returns once their versions are settled."""
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
            model = existing if existing is not None else DenseSubModel(config)
            self.models[name] = model
            model.config = config
            await self.update(model, fresh=fresh or changed)

    async def refresh(self) -> None:
        """One file-system poll: picks up new versions of every hosted model."""
        for model in list(self.models.values()):
            await self.update(model)

    async def update(self, model: DenseSubModel, *, fresh: bool = False) -> None:
        async with model.lock:
            config = model.config
            try:
                on_disk = list_versions(config.base_path)
            except NotFoundError as error:
                logger.warning("model %s: %s", config.name, error.message)
                on_disk = []
            held = [v.version for v in model.versions.values() if v.state in (ModelState.LOADING, ModelState.AVAILABLE)]
            desired = config.policy.choose(on_disk, () if fresh else held)
            for version in sorted(desired, reverse=True):  # newest first: it is what unpinned requests want
                known = model.versions.get(version)
                if known is None or (fresh and known.state is ModelState.END):
                    await self._load(model, version)
            # An explicit empty ``specific {}`` means "serve nothing"; otherwise keep old versions until a
            # wanted one is AVAILABLE.
            serve_nothing = config.policy.kind is PolicyKind.SPECIFIC and not config.policy.versions
            settled = any(model.versions[v].state is ModelState.AVAILABLE for v in desired if v in model.versions)
            if serve_nothing or settled:
                for servable in list(model.versions.values()):
                    if servable.version not in desired and servable.state is ModelState.AVAILABLE:
                        self._unload(model, servable)

    async def close(self) -> None:
        for model in self.models.values():
            for servable in list(model.versions.values()):
                self._unload(model, servable)

    async def _load(self, model: DenseSubModel, version: int) -> None:
        servable = DenseVersion(version)
        model.versions[version] = servable
        self._set_state(model, servable, ModelState.LOADING)
        path = version_dir(model.config.base_path, version)
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(self._executor, self._loader, path)
        except Exception as exc:  # any broken export must end as END with its reason, never crash the loop
            error = (
                exc
                if isinstance(exc, MonolithServingError)
                else FailedPreconditionError(f"{type(exc).__name__}: {exc}")
            )
            servable.error = error
            self._set_state(model, servable, ModelState.END)
            self._metrics.load_failures.labels(model.config.name).inc()
            logger.error("model %s version %d: load failed: %s", model.config.name, version, error.message)
            return
        servable.loaded = loaded
        self._set_state(model, servable, ModelState.AVAILABLE)
        logger.info(
            "model %s version %d: AVAILABLE (input width %d, output %r)",
            model.config.name, version, loaded.spec.input_width, loaded.spec.output_name,
        )  # fmt: skip

    def _unload(self, model: DenseSubModel, servable: DenseVersion) -> None:
        if servable.state is not ModelState.AVAILABLE:
            return
        servable.loaded = None
        self._set_state(model, servable, ModelState.END)
        logger.info("model %s version %d: unloaded", model.config.name, servable.version)

    def _set_state(self, model: DenseSubModel, servable: DenseVersion, state: ModelState) -> None:
        servable.state = state
        self._metrics.version_state.labels(model.config.name, str(servable.version)).set(int(state))
