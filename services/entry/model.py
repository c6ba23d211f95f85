"""The entry's transport-free core: entry versions, version gating on the PS, and Predict.

Version lifecycle (``refresh()`` is one control-loop step; it never raises for a bad version):

1. the version policy picks the wanted versions among the integer folders of ``base_path``;
2. a wanted version is loaded (serving spec, request parser, dense network) on an executor thread;
   a failing load is retried on later steps, at most ``max_load_attempts`` times;
3. a loaded version becomes *served* once every PS shard reports it AVAILABLE (``ps_ready``) — and, when
   its dense network is remote (dense_alone), once ``dense_0`` has it AVAILABLE too (``dense_ready``); it then
   replaces the versions served before. Until then the previous versions keep serving — and they stay
   served through a PS status flap, so one missed status poll never takes the entry down;
4. versions neither wanted nor served are unloaded.

Predict uses the newest served version unless the request pins one. All state changes happen on the
event loop thread; requests read an immutable snapshot (``_served``), so no locks are needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from monolith_serving.core.agent_conf import DEFAULT_FETCH_PS_TIMEOUT_MS
from monolith_serving.core.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    MonolithServingError,
    NotFoundError,
    UnavailableError,
)
from monolith_serving.core.export_layout import VersionPolicy, list_versions, version_dir
from monolith_serving.core.model_config_list import check_base_path, check_version_labels
from monolith_serving.core.model_state import ENDED_VERSIONS_KEPT, ModelState
from monolith_serving.core.predict_signature import DEFAULT_SIGNATURE
from monolith_serving.core.serving_spec import DenseBackend, ServingSpec, load_serving_spec
from monolith_serving.entry.dense import DenseModel, load_dense
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.outputs import EntryOutputs
from monolith_serving.entry.pooling import Pooler
from monolith_serving.entry.ps_client import EmbeddingLookup, LookupResult
from monolith_serving.entry.request_coalesce import PassDeadlines, PassOutput, PredictCoalescer, RequestCoalescing
from monolith_serving.entry.request_parser import DEFAULT_MAX_FIDS_PER_REQUEST, ParsedBatch, RequestParser

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: ModelState
    error: MonolithServingError | None = None
    detail: str = ""


@dataclass(frozen=True)
class EntryModelConfig:
    name: str  # model_spec.name clients use: "entry" (agent v1) or "<model>:entry" (v3)
    base_path: Path  # the entry sub-model folder, holding <version>/serving_spec.json
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    version_labels: tuple[tuple[str, int], ...] = ()
    fetch_ps_timeout_ms: int = DEFAULT_FETCH_PS_TIMEOUT_MS
    max_batch_size: int | None = None  # overrides the serving spec's maximum when set
    max_load_attempts: int = 5


@dataclass(frozen=True)
class LoadedVersion:
    version: int
    path: Path
    spec: ServingSpec
    parser: RequestParser
    dense: DenseModel
    pooler: Pooler
    dims: Mapping[str, int]  # table -> embedding dim
    outputs: EntryOutputs

    @property
    def remote_dense(self) -> bool:
        return self.spec.dense.backend is DenseBackend.REMOTE


@dataclass(frozen=True)
class PredictResult:
    outputs: dict[str, npt.NDArray[np.float32]]
    version: int
    ps_versions: dict[int, int]  # shard -> PS version that answered


RemoteDenseFactory = Callable[[ServingSpec], DenseModel]
"""Builds the remote network of a version whose spec says ``"backend": "remote"`` (``remote_dense``)."""


def load_version(
    path: Path,
    version: int,
    num_ps: int,
    max_batch_size: int | None,
    remote_dense: RemoteDenseFactory | None = None,
    max_fids_per_request: int = DEFAULT_MAX_FIDS_PER_REQUEST,
) -> LoadedVersion:
    """Reads and validates one entry version folder (blocking: run it on an executor)."""
    spec = load_serving_spec(path)
    if spec.num_ps != num_ps:
        raise FailedPreconditionError(
            f"{path}: serving spec says num_ps={spec.num_ps} but the entry has {num_ps} PS shards"
        )
    dense: DenseModel
    if spec.dense.backend is DenseBackend.REMOTE:
        if remote_dense is None:
            raise FailedPreconditionError(
                f"{path}: the serving spec runs the dense network in {spec.dense.sub_model} (dense_alone) but this "
                "entry knows no dense server: give --dense_targets or run it under an agent"
            )
        dense = remote_dense(spec)
    else:
        dense = load_dense(spec, path)
    outputs = EntryOutputs.of(spec)
    outputs.check_network(dense.output_width, str(path))
    return LoadedVersion(
        version,
        path,
        spec,
        RequestParser(spec, max_batch_size, max_fids_per_request),
        dense,
        Pooler(spec),
        {t.name: t.dim for t in spec.tables},
        outputs,
    )


class EntryModel:
    def __init__(
        self,
        *,
        config: EntryModelConfig | None,
        num_ps: int,
        lookup: EmbeddingLookup,
        ps_ready: Callable[[int], bool],
        metrics: EntryMetrics,
        remote_dense: RemoteDenseFactory | None = None,
        dense_ready: Callable[[int], bool] | None = None,
        coalescing: RequestCoalescing | None = None,
        max_fids_per_request: int = DEFAULT_MAX_FIDS_PER_REQUEST,
    ) -> None:
        """``max_fids_per_request`` is a server setting, not a model's: it outlives reconfigure and reloads."""
        self._config = config
        self._max_fids_per_request = max_fids_per_request
        self._num_ps = num_ps
        self._lookup = lookup
        self._ps_ready = ps_ready
        self._remote_dense = remote_dense
        self._dense_ready = dense_ready
        self._metrics = metrics
        self._loaded: dict[int, LoadedVersion] = {}
        self._failures: dict[int, tuple[int, MonolithServingError]] = {}
        self._unloaded: set[int] = set()
        self._chosen: list[int] = []
        self._served: tuple[int, ...] = ()
        self._refresh_lock = asyncio.Lock()
        coalescing = coalescing if coalescing is not None else RequestCoalescing()
        merged = metrics.predicts_coalesced
        self._coalescer: PredictCoalescer[LoadedVersion] | None = (
            PredictCoalescer(self._run_pass, coalescing, on_merged=merged.inc) if coalescing.enabled else None
        )

    @property
    def config(self) -> EntryModelConfig | None:
        return self._config

    @property
    def served_versions(self) -> tuple[int, ...]:
        return self._served

    def version(self, version: int) -> LoadedVersion | None:
        return self._loaded.get(version)

    @property
    def needs_remote_dense(self) -> bool:
        """Some loaded version runs its dense network in a dense server (dense_alone)."""
        return any(loaded.remote_dense for loaded in self._loaded.values())

    # -- lifecycle ------------------------------------------------------------------------------------

    async def reconfigure(self, config: EntryModelConfig | None) -> None:
        """Switches to a new model config (None unloads the model) and applies it at once.

        A new policy for the same model (name and base path unchanged) is availability-preserving, as in TF
        Serving: the versions served so far keep serving until a newly wanted version is ready (the model
        manager's rollout relies on this to switch versions without failing requests).

        Refused, with the previous config kept and serving: a base path that is not an existing folder, unless it
        is the current one (NOT_FOUND), and a version label newly set on a version not served (FAILED_PRECONDITION;
        see ``core.model_config_list``). Another model (name or base path) replaces the versions served so far, so
        while some are served its wanted versions are loaded first, and when none loads (a folder with no version,
        another sub-model's folder, a broken export) the switch is refused with FAILED_PRECONDITION. Serving
        nothing, the entry takes any existing folder: its versions may come later.
        """
        async with self._refresh_lock:
            previous = self._config
            same_model = (
                previous is not None
                and config is not None
                and (previous.name, previous.base_path) == (config.name, config.base_path)
            )
            preloaded: dict[int, LoadedVersion] = {}
            failed: dict[int, MonolithServingError] = {}
            if config is not None:
                self._check_switch(config, previous)
                if not same_model and self._served:
                    preloaded, failed = await self._preload(config, previous)
            self._config = config
            self._failures = {version: (1, error) for version, error in failed.items()}
            self._chosen = []
            if not same_model:
                self._loaded = preloaded
                self._unloaded.clear()
                self._served = ()
        await self.refresh()

    def _check_switch(self, config: EntryModelConfig, previous: EntryModelConfig | None) -> None:
        """The base path and version label checks of a reload, against the model served now (same name)."""
        current = previous if previous is not None and previous.name == config.name else None
        check_base_path(config.name, config.base_path, hosted_from=current.base_path if current else None)
        check_version_labels(
            config.name,
            dict(config.version_labels),
            available=self._served if current is not None else (),
            kept=dict(current.version_labels) if current is not None else {},
        )

    async def _preload(
        self, config: EntryModelConfig, previous: EntryModelConfig | None
    ) -> tuple[dict[int, LoadedVersion], dict[int, MonolithServingError]]:
        """The versions ``config`` wants, loaded (and those that failed); FAILED_PRECONDITION when none loads."""
        loaded: dict[int, LoadedVersion] = {}
        failed: dict[int, MonolithServingError] = {}
        for version in config.policy.choose(list_versions(config.base_path)):
            try:
                loaded[version] = await self._load(config, version)
            except MonolithServingError as error:
                logger.error("cannot load entry version %d of the new config: %s", version, error.message)
                failed[version] = error
        if loaded:
            return loaded, failed
        why = "; ".join(f"version {v}: {e.message}" for v, e in failed.items()) or "no version the policy wants"
        serving = f"{previous.name!r} from {str(previous.base_path)!r}" if previous is not None else "nothing"
        raise FailedPreconditionError(
            f"model {config.name!r}: nothing to serve under base_path {str(config.base_path)!r} ({why}); "
            f"the entry keeps serving {serving} (versions {list(self._served)})"
        )

    async def _load(self, config: EntryModelConfig, version: int) -> LoadedVersion:
        """One version of ``config``, read on an executor thread; raises what ``load_version`` raises."""
        path = version_dir(config.base_path, version)
        logger.info("loading entry version %d from %s", version, path)
        loaded = await asyncio.get_running_loop().run_in_executor(
            None,
            load_version,
            path,
            version,
            self._num_ps,
            config.max_batch_size,
            self._remote_dense,
            self._max_fids_per_request,
        )
        logger.info("loaded entry version %d from %s", version, path)
        return loaded

    async def refresh(self) -> None:
        """One control step: scan, load, gate, unload. Safe to call concurrently (serialised)."""
        async with self._refresh_lock:
            await self._refresh()

    async def _refresh(self) -> None:
        config = self._config
        if config is None:
            return
        try:
            on_disk = list_versions(config.base_path)
        except NotFoundError as error:
            logger.warning("%s", error.message)
            on_disk = []
        wanted = config.policy.choose(on_disk, self._chosen)
        self._chosen = wanted
        for version in wanted:
            if version in self._loaded:
                continue
            attempts, _ = self._failures.get(version, (0, None))
            if attempts >= config.max_load_attempts:
                continue
            try:
                loaded = await self._load(config, version)
            except MonolithServingError as error:
                logger.error("cannot load entry version %d (attempt %d): %s", version, attempts + 1, error.message)
                self._failures[version] = (attempts + 1, error)
                continue
            if self._config is not config:
                return  # reconfigured while loading; the next step starts over
            self._failures.pop(version, None)
            self._loaded[version] = loaded
        served = set(self._served)
        ready = [v for v in wanted if v in self._loaded and (v in served or self._backends_ready(self._loaded[v]))]
        # Nothing wanted ready yet: keep serving what we served (while its files still exist).
        new_served = tuple(sorted(ready)) if ready else tuple(v for v in self._served if v in on_disk)
        if new_served != self._served:
            logger.info("entry %s now serves versions %s (was %s)", config.name, list(new_served), list(self._served))
        self._served = new_served
        for version in [v for v in self._loaded if v not in wanted and v not in new_served]:
            del self._loaded[version]
            self._unloaded.add(version)
        self._forget_old_ended(wanted)
        self._metrics.served_version.set(max(new_served) if new_served else 0)
        self._metrics.loaded_versions.set(len(self._loaded))

    def _forget_old_ended(self, wanted: Sequence[int]) -> None:
        """Keeps the newest ``ENDED_VERSIONS_KEPT`` unloaded or failed versions that are no longer wanted. A failed
        version still wanted keeps its attempt count, so that it is not loaded again on every step."""
        ended = sorted((self._unloaded | self._failures.keys()) - set(wanted) - self._loaded.keys(), reverse=True)
        for version in ended[ENDED_VERSIONS_KEPT:]:
            self._unloaded.discard(version)
            self._failures.pop(version, None)

    def _backends_ready(self, loaded: LoadedVersion) -> bool:
        """Every PS shard (and dense_0 when the network is remote) has the version AVAILABLE."""
        if not self._ps_ready(loaded.version):
            return False
        return not loaded.remote_dense or (self._dense_ready is not None and self._dense_ready(loaded.version))

    # -- queries --------------------------------------------------------------------------------------

    def _check_name(self, name: str) -> EntryModelConfig:
        config = self._config
        if config is None or name != config.name:
            raise NotFoundError(f"model {name!r} is not served here")
        return config

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Per-version states, newest first (AVAILABLE = served; LOADING = loaded, waiting for the PS)."""
        self._check_name(name)
        statuses: dict[int, VersionStatus] = {}
        for v in self._unloaded:
            statuses[v] = VersionStatus(v, ModelState.END)
        for v, (attempts, error) in self._failures.items():
            statuses[v] = VersionStatus(v, ModelState.END, error, f"load failed {attempts} time(s)")
        for v in self._chosen:
            if v not in self._loaded and v not in self._failures:
                statuses[v] = VersionStatus(v, ModelState.START)
        for v, loaded in self._loaded.items():
            if v in self._served:
                statuses[v] = VersionStatus(v, ModelState.AVAILABLE)
            else:
                also = f" and {loaded.spec.dense.sub_model}" if loaded.remote_dense else ""
                statuses[v] = VersionStatus(
                    v, ModelState.LOADING, detail=f"waiting until every PS shard{also} has version {v} AVAILABLE"
                )
        if version is not None:
            if version not in statuses:
                raise NotFoundError(f"model {name!r} has no version {version}")
            return [statuses[version]]
        return [statuses[v] for v in sorted(statuses, reverse=True)]

    def resolve(self, name: str, version: int | None) -> LoadedVersion:
        """The version a request runs on: the pinned one, else the newest served one."""
        self._check_name(name)
        served = self._served
        if not served:
            raise NotFoundError(f"model {name!r} has no version ready to serve")
        chosen = max(served) if version is None else version
        if chosen not in served:
            raise NotFoundError(f"model {name!r} version {version} is not being served (serving {list(served)})")
        return self._loaded[chosen]

    # -- predict --------------------------------------------------------------------------------------

    @staticmethod
    def parse(loaded: LoadedVersion, inputs: Mapping[str, npt.NDArray[Any]]) -> ParsedBatch:
        taken = loaded.spec.inputs  # the serving spec's ``inputs``: all three unless it names fewer
        unknown = sorted(set(inputs) - set(taken))
        if unknown:
            raise InvalidArgumentError(f"unknown input(s) {unknown}; expected one of {', '.join(taken)}")
        kinds = [k for k in taken if k in inputs]
        if not kinds:
            raise InvalidArgumentError(f"missing input: the request needs one of {', '.join(taken)}")
        if len(kinds) > 1:
            raise InvalidArgumentError(f"give exactly one of {', '.join(taken)}, got {kinds}")
        kind = kinds[0]
        array = inputs[kind]
        if array.dtype != np.dtype(object):
            raise InvalidArgumentError(f"input {kind!r} must be DT_STRING, got {array.dtype}")
        blobs: Sequence[bytes] = array.reshape(-1).tolist()
        if kind == "instances":
            return loaded.parser.parse_instances(blobs)
        if kind == "examples":
            return loaded.parser.parse_examples(blobs)
        if len(blobs) != 1:
            raise InvalidArgumentError(f"input 'example_batch' must hold exactly 1 ExampleBatch, got {len(blobs)}")
        return loaded.parser.parse_example_batch(blobs[0])

    async def predict(
        self,
        *,
        name: str,
        version: int | None,
        signature_name: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        output_filter: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> PredictResult:
        """Parses, looks up, pools and scores one request.

        ``timeout_s`` is what is left of the caller's deadline; without one the PS calls get
        ``fetch_ps_timeout_ms`` (and so does a remote dense call, separately).
        """
        started = time.monotonic()
        loaded = self.resolve(name, version)
        config = self._config
        assert config is not None  # resolve() checked it
        if signature_name not in ("", DEFAULT_SIGNATURE):
            raise InvalidArgumentError(f"model {name!r} has no signature {signature_name!r}; use {DEFAULT_SIGNATURE!r}")
        chosen = loaded.outputs.select(output_filter)
        batch = self.parse(loaded, inputs)
        self._metrics.batch_size.observe(batch.batch_size)
        default_s = config.fetch_ps_timeout_ms / 1000.0
        deadlines = PassDeadlines(
            ps=started + (timeout_s if timeout_s is not None else default_s),
            client=started + timeout_s if timeout_s is not None else None,
            dense_default_s=default_s,
        )
        try:
            if self._coalescer is None:
                output = await self._run_pass(loaded, batch, deadlines)
            else:
                output = await self._coalescer.run(loaded, batch, deadlines)
        except DeadlineExceededError as error:
            # DEADLINE_EXCEEDED only when this caller's own deadline has passed; a PS that used up the entry's
            # budget (fetch_ps_timeout_ms, or a merged pass's longer deadline) while the caller still had time is
            # this server failing: UNAVAILABLE, which a proxy may retry elsewhere.
            if deadlines.client is None or time.monotonic() < deadlines.client:
                raise UnavailableError(error.message) from None
            raise
        return PredictResult(loaded.outputs.answer(output.scores, chosen), loaded.version, output.ps_versions)

    async def _run_pass(self, loaded: LoadedVersion, batch: ParsedBatch, deadlines: PassDeadlines) -> PassOutput:
        """Looks up, pools and scores one batch (one request's, or several merged by the coalescer)."""
        plan = loaded.pooler.plan(batch)
        if plan.unique_fids:
            now = time.monotonic()
            urgent_s = None if deadlines.ps_urgent is None else deadlines.ps_urgent - now
            result = await self._lookup.lookup(
                loaded.version, plan.unique_fids, loaded.dims, deadlines.ps - now, urgent_s=urgent_s
            )
        else:
            result = LookupResult({}, {})
        x = loaded.pooler.assemble(batch, plan, result.values)
        scores = await loaded.dense.score(
            x, version=loaded.version, timeout_s=deadlines.dense_timeout_s(time.monotonic())
        )
        return PassOutput(scores, result.ps_versions)
