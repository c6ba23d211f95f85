"""UnifiedServer: one gRPC address serving a PS core, a dense core and an entry core side by side (a v3 container).

Start: bind gRPC (health NOT_SERVING) -> /metrics -> open the PS and dense cores -> apply ``--model_config_file``
if given -> health follows the models. Models then come from HandleReloadConfigRequest, or, with
``--model_config_file_poll_wait_seconds`` > 0, from the config file re-read that often (how Monolith's v3 agent
changes its tensorflow_model_server's models: it rewrites the file and relies on the poll). Either way the config
is split by sub_graph (``routing``), the PS part replaces the PS core's models, the dense part the dense core's
and the entry part the entry core's (an empty part unloads that side). Reloads are serialised. Stop (idempotent): health
NOT_SERVING -> drain gRPC and the REST API (``--rest_api_port``: the gRPC handlers answer it in this process,
``core.model_server_rest``) -> close the entry core, then the dense and PS cores -> stop /metrics.

Health (service "" and the PredictionService and ModelService names), as the PS's and the dense server's: SERVING
exactly while every hosted model has an AVAILABLE version — each ``ps_<i>`` and ``dense_<i>`` sub-model, and the
entry once it serves a version (so once its PS shards, and a remote dense network, have it somewhere). Hosting
nothing is SERVING (nothing to wait for). The cores change their versions in loops of their own, so health is
recomputed after every reload and every ``poll_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from prometheus_client import CollectorRegistry

from monolith_serving.core.agent_conf import DEFAULT_FETCH_PS_RETRY, DEFAULT_FETCH_PS_TIMEOUT_MS
from monolith_serving.core.errors import FailedPreconditionError, MonolithServingError
from monolith_serving.core.export_layout import read_model_server_config
from monolith_serving.core.grpc_server import ChannelArguments, GrpcServer, GrpcServerOptions, build_server
from monolith_serving.core.local_calls import LocalCalls
from monolith_serving.core.metrics_http import MetricsEndpoint, serve_metrics
from monolith_serving.core.model_config_list import check_reload
from monolith_serving.core.model_health import HostedModel, ModelHealth
from monolith_serving.core.model_server_rest import LocalRestBackend, RestApiMetrics
from monolith_serving.core.rest_gateway import RestConfig, RestGateway
from monolith_serving.core.run_to_end import run_to_end
from monolith_serving.core.tls_config import ServerTls
from monolith_serving.dense.config import DenseModelConfig, DenseServerConfig, dense_models_from_proto
from monolith_serving.dense.server import DenseServer
from monolith_serving.entry.main import control_period_from_flag
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModelConfig
from monolith_serving.entry.ps_coalesce import CoalesceConfig
from monolith_serving.entry.request_coalesce import RequestCoalescing
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
)
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2
from monolith_serving.ps.config import (
    DEFAULT_MAX_FIDS_PER_REQUEST,
    PsConfig,
    SubModelConfig,
    check_partitions,
    sub_models_from_proto,
)
from monolith_serving.ps.server import PsServer
from monolith_serving.ps.servicer import add_prediction_servicer
from monolith_serving.unified.entry_side import EntrySettings, EntrySide
from monolith_serving.unified.routing import split_model_server_config
from monolith_serving.unified.servicer import UnifiedModelServicer, UnifiedPredictionServicer

__all__ = ["UnifiedConfig", "UnifiedServer"]

log = logging.getLogger(__name__)

_PREDICTION_SERVICE = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
_MODEL_SERVICE = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
# The health services that follow the models: the whole server ("") and each service it hosts by name.
_HEALTH_SERVICES = ("", _PREDICTION_SERVICE, _MODEL_SERVICE)


@dataclass(frozen=True)
class _Models:
    """One config's models, per core (``entry`` None: unload the entry)."""

    ps: tuple[SubModelConfig, ...]
    dense: tuple[DenseModelConfig, ...]
    entry: EntryModelConfig | None


@dataclass(frozen=True, kw_only=True)
class UnifiedConfig:
    port: int
    agent_address: str  # the entry core finds PS replicas through this agent's HeartBeat
    host: str = "0.0.0.0"
    grpc_socket_path: Path | None = None  # --grpc_socket_path: gRPC on this UNIX socket too
    metrics_port: int = 0
    rest: RestConfig | None = None  # --rest_api_port and its flags: every hosted sub_graph by name; None: no REST
    grpc_channel_arguments: ChannelArguments = ()  # --grpc_channel_arguments
    # --ssl_config_file. Entries dial PS and dense sub_graphs in plaintext, and the agent its container: with TLS
    # this container serves clients only (its entry core's own PS calls are plaintext too).
    tls: ServerTls | None = None
    model_config_file: Path | None = None  # applied at start; later configs come by reload or the file poll
    model_config_file_poll_wait_s: float = 0.0  # re-read model_config_file this often (0: never)
    file_system_poll_wait_s: float = 1.0
    fetch_ps_timeout_ms: int = DEFAULT_FETCH_PS_TIMEOUT_MS
    fetch_ps_retry: int = DEFAULT_FETCH_PS_RETRY
    coalesce: CoalesceConfig = field(default_factory=CoalesceConfig)
    coalesce_requests: RequestCoalescing = field(default_factory=RequestCoalescing)
    max_batch_size: int | None = None
    num_load_threads: int = 1
    max_fids_per_request: int = DEFAULT_MAX_FIDS_PER_REQUEST
    grace_s: float = 2.0


def _config_bytes(config: model_server_config_pb2.ModelServerConfig) -> bytes:
    return config.SerializeToString(deterministic=True)


class UnifiedServer:
    """``start``/``stop`` are idempotent; ``async with`` works too. ``reload`` is HandleReloadConfigRequest."""

    def __init__(self, config: UnifiedConfig) -> None:
        self.config = config
        # One registry: PS metrics are monolith_ps_*, dense ones monolith_dense_*, entry ones entry_*: no collision.
        self.registry = CollectorRegistry()
        self.ps = PsServer(
            PsConfig(
                port=config.port,
                host=config.host,
                file_system_poll_wait_s=config.file_system_poll_wait_s,
                max_fids_per_request=config.max_fids_per_request,
                num_load_threads=config.num_load_threads,
                models_from_reload=True,
            ),
            registry=self.registry,
        )
        self.dense = DenseServer(
            DenseServerConfig(
                port=config.port,
                host=config.host,
                file_system_poll_wait_s=config.file_system_poll_wait_s,
                num_load_threads=config.num_load_threads,
                models_from_reload=True,
            ),
            registry=self.registry,
        )
        # Health and the entry core's control loop must keep running whatever the flag says (0, negative, NaN).
        self._poll_interval_s = max(control_period_from_flag(config.file_system_poll_wait_s), 0.2)
        self.entry = EntrySide(
            settings=EntrySettings(
                agent_address=config.agent_address,
                fetch_ps_timeout_ms=config.fetch_ps_timeout_ms,
                fetch_ps_retry=config.fetch_ps_retry,
                coalesce=config.coalesce,
                coalesce_requests=config.coalesce_requests,
                max_batch_size=config.max_batch_size,
                poll_interval_s=self._poll_interval_s,
                max_fids_per_request=config.max_fids_per_request,
            ),
            metrics=EntryMetrics(self.registry),
        )
        self._health = ModelHealth(self._hosted_models, _HEALTH_SERVICES, "sub_graph")
        self._reload_lock = asyncio.Lock()
        self._changes: set[asyncio.Task[None]] = set()  # reloads running to their end (``core.run_to_end``)
        self._grpc: GrpcServer | None = None
        self._rest: RestGateway | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._config_poll_task: asyncio.Task[None] | None = None
        # The last config applied (deterministic bytes), whichever way it came: the file poll applies the file only
        # when it differs, as TF Serving's ReloadConfig of the current config changes nothing.
        self._applied_config: bytes | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        if self._grpc is None:
            raise RuntimeError("UnifiedServer is not started")
        return self._grpc.port

    @property
    def rest_port(self) -> int | None:
        """The REST API's port once started; None without one."""
        return self._rest.port if self._rest is not None else None

    def _hosted_models(self) -> dict[str, HostedModel]:
        """Every hosted model by name, as health judges them (the names of the cores never overlap)."""
        return {**self.ps.versions.models, **self.dense.versions.models, **self.entry.readiness()}

    async def reload(self, config: model_server_config_pb2.ModelServerConfig, *, fresh: bool = True) -> None:
        """A HandleReloadConfigRequest: refused before any core changes when a model moves to a base path that is
        not a folder or a PS or dense version label names a version not AVAILABLE (``core.model_config_list``; the
        start-up config is not held to this: its folders may come later). ``fresh`` as ``PsServer.reload``."""
        models = self._parse(config)
        check_partitions(models.ps, self.ps.core.num_ps)
        check_reload(models.ps, self.ps.versions)
        check_reload(models.dense, self.dense.versions)
        self.entry.check(models.entry)
        await run_to_end(self._apply_all(models, _config_bytes(config), fresh=fresh), "reload", self._changes)

    async def apply(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Every part is validated before any core changes; then PS, dense, entry (the entry gates on the others)."""
        await run_to_end(self._apply_all(self._parse(config), _config_bytes(config)), "reload", self._changes)

    async def _apply_start_config(self, path: Path) -> None:
        """Applies ``--model_config_file`` at start; a config that is wrong (does not parse, names what no core
        hosts) stops the start (exit 2 names it). With a config poll, the file is what Monolith's v3 agent keeps
        rewriting, and a restarted container finds it naming an entry whose version is not there yet (no serving
        spec, FAILED_PRECONDITION; it is applied last, after the PS and dense parts): as TF Serving waits for such a
        model, the server starts with the PS and dense parts and the poll retries the entry. Without a poll nothing
        would retry, so that too stops the start."""
        config = read_model_server_config(path)
        try:
            await self.apply(config)
        except FailedPreconditionError as error:
            if self.config.model_config_file_poll_wait_s <= 0:
                raise
            log.warning("model config file %s not all applied at start, the poll retries it: %s", path, error.message)

    async def _poll_config_file(self, path: Path, interval_s: float) -> None:
        """Every ``interval_s``: a file whose config differs from the one applied is applied as a reload (refused
        changes nothing, as HandleReloadConfigRequest; tried again next time, since the folders it names may come
        later). Not ``fresh``: a retry after a part failed (an entry with no version yet) leaves the models whose
        config did not change as they are. An unreadable or unparsable file (being rewritten) is logged and read
        again next time; the read runs off the event loop (a stalled file system must not stall serving). A file that
        sets no config changes nothing, as tensorflow_model_server takes no action for an empty config: Monolith's v3
        agent truncates the file before it writes it, so a poll can read it empty (``model_config_list {}``, which
        it writes for no models, does unload them)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                config = await asyncio.to_thread(read_model_server_config, path)
                if config.WhichOneof("config") is None:
                    log.info("model config file %s sets no config (empty, or being rewritten): no action", path)
                elif _config_bytes(config) != self._applied_config:
                    log.info("model config file %s changed: applying it", path)
                    await self.reload(config, fresh=False)
            except MonolithServingError as error:
                log.warning("model config file %s not applied: %s", path, error.message)
            except Exception:
                log.exception("model config file %s: poll step failed", path)

    def _parse(self, config: model_server_config_pb2.ModelServerConfig) -> _Models:
        split = split_model_server_config(config)
        return _Models(
            ps=sub_models_from_proto(split.ps),
            dense=dense_models_from_proto(split.dense),
            entry=self.entry.parse(split.entry),
        )

    async def _apply_all(self, models: _Models, config: bytes, *, fresh: bool = True) -> None:
        # Run to its end as one change: a caller cut off between the parts left the PS part applied and the entry
        # part not, and released the lock while the PS part still ran. ``config`` is recorded here, not by the
        # caller, so that a change whose caller stopped waiting still counts as applied (the file poll compares).
        async with self._reload_lock:
            try:
                await self.ps.reload(models.ps, fresh=fresh)
                await self.dense.reload(models.dense, fresh=fresh)
                await self.entry.apply(models.entry)
                self._applied_config = config
            finally:
                await self._follow_health()
        log.info(
            "hosting %d PS models, %d dense models and entry %s",
            len(models.ps),
            len(models.dense),
            models.entry.name if models.entry else "(none)",
        )

    async def _follow_health(self) -> None:
        await self._health.follow(None if self._stopped else self._grpc)

    async def _health_loop(self) -> None:
        """The cores' own loops (file-system polls, the entry's PS gate) change what is AVAILABLE: follow them. A
        failing step is logged and never stops the loop."""
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self._follow_health()
            except Exception:
                log.exception("health step failed")

    async def start(self) -> None:
        if self._grpc is not None:
            return
        ps_prediction, ps_model = self.ps.servicers()
        dense_prediction, dense_model = self.dense.servicers()
        prediction = UnifiedPredictionServicer(ps=ps_prediction, dense=dense_prediction, entry=self.entry)
        models = UnifiedModelServicer(ps=ps_model, dense=dense_model, entry=self.entry, apply_config=self.reload)

        def add_prediction(server: grpc.aio.Server) -> None:
            add_prediction_servicer(prediction, server)

        def add_model(server: grpc.aio.Server) -> None:
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, server)  # type: ignore[no-untyped-call]

        options = GrpcServerOptions(
            port=self.config.port,
            host=self.config.host,
            reflection_services=(_PREDICTION_SERVICE, _MODEL_SERVICE),
            channel_arguments=self.config.grpc_channel_arguments,
            tls=self.config.tls,
            socket_path=self.config.grpc_socket_path,
        )
        add_servicers = [add_prediction, add_model]
        self._grpc = build_server(options, add_servicers, registry=self.registry)
        if self.config.rest is not None:
            backend = LocalRestBackend(LocalCalls(add_servicers), RestApiMetrics(self.registry, "unified"))
            self._rest = RestGateway(backend, self.config.rest, metrics_registry=self.registry)
        if self.config.tls is not None:
            log.warning(
                "TLS on the gRPC port: entries (this container's own too) dial PS and dense sub_graphs in "
                "plaintext, and an agent dials its container in plaintext, so host entry sub_graphs only here and "
                "take models from --model_config_file"
            )
        await self._grpc.start()
        if self._rest is not None:
            await self._rest.start()
        if self.config.metrics_port:
            self._metrics_endpoint = serve_metrics(self.config.metrics_port, self.registry, host=self.config.host)
        await self.ps.open()
        await self.dense.open()
        if self.config.model_config_file is not None:
            await self._apply_start_config(self.config.model_config_file)
        await self._follow_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="unified-health")
        path, poll_s = self.config.model_config_file, self.config.model_config_file_poll_wait_s
        if path is not None and poll_s > 0:
            self._config_poll_task = asyncio.create_task(self._poll_config_file(path, poll_s), name="config-poll")
        rest = f", REST API on port {self.rest_port}" if self.rest_port is not None else ""
        unix = f" and unix:{self.config.grpc_socket_path}" if self.config.grpc_socket_path is not None else ""
        log.info("unified server on port %d%s%s", self._grpc.port, unix, rest)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for task in (self._config_poll_task, self._health_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        draining = []
        if self._grpc is not None:
            await self._health.stop(self._grpc)
            draining.append(self._grpc.stop(self.config.grace_s))
        if self._rest is not None:
            draining.append(self._rest.stop())  # drains for --grace_s too (RestConfig.drain_timeout_s)
        await asyncio.gather(*draining)
        for change in list(self._changes):
            change.cancel()
        if self._changes:
            await asyncio.gather(*self._changes, return_exceptions=True)
        await self.entry.close()
        await self.dense.close()
        await self.ps.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()

    async def __aenter__(self) -> UnifiedServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
