"""``monolith-serving entry``: the model server clients reach (REFERENCE §1, §3, §4).

Start-up order: replica source -> first PS status poll and model scan -> gRPC server, and with ``--rest_api_port``
the REST API answered by the gRPC handlers (``core.model_server_rest``) -> health SERVING once a version is served.
A control loop then runs every ``--file_system_poll_wait_seconds``: poll PS status, rescan/load/gate versions, drop
channels of vanished replicas — each step isolated, logged with its traceback on failure and timed into
``entry_control_step_seconds``. Shutdown: health NOT_SERVING, gRPC and REST stop accepting and drain for
``--grace_s``, then PS channels and the replica source close.

dense_alone: dense replicas come from ``--dense_targets`` or, under an agent, from its HeartBeat
(``dense:0``); they are tracked (status poll, channels) like the PS replicas and used by the versions whose
serving spec says ``"backend": "remote"``. Without either source such a version fails to load.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from monolith_serving.core.agent_conf import DEFAULT_FETCH_PS_RETRY, DEFAULT_FETCH_PS_TIMEOUT_MS
from monolith_serving.core.cli_flags import (
    TFS_GRPC_PORT,
    add_bool_flag,
    add_flag,
    add_grpc_socket_path_flag,
    add_host_flag,
    add_server_flags,
    add_tfs_compat_flags,
    agent_address_from_environment,
    grpc_socket_path_from_args,
    main_grpc_port,
    warn_unused_tfs_flags,
)
from monolith_serving.core.config_file_poll import ModelConfigFile
from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError
from monolith_serving.core.export_layout import VersionPolicy, list_versions, read_model_server_config
from monolith_serving.core.grpc_server import (
    ChannelArguments,
    GrpcServer,
    GrpcServerOptions,
    build_server,
    serve_until_signal,
)
from monolith_serving.core.local_calls import LocalCalls
from monolith_serving.core.metrics_http import MetricsEndpoint, serve_metrics
from monolith_serving.core.model_server_rest import LocalRestBackend, RestApiMetrics
from monolith_serving.core.rest_flags import TFS_REST_FLAGS, add_rest_api_flags, rest_config_from_args
from monolith_serving.core.rest_gateway import RestConfig, RestGateway
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.core.tls_config import ServerTls, add_ssl_config_flag, server_tls_from_flag
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModel, EntryModelConfig
from monolith_serving.entry.ps_client import (
    ChannelPool,
    FanoutConfig,
    PsFanout,
    ReplicaHealth,
    RetryPolicy,
)
from monolith_serving.entry.ps_coalesce import CoalesceConfig
from monolith_serving.entry.ps_status import PsStatusTracker
from monolith_serving.entry.remote_dense import DenseReplicas, RemoteDenseConfig, dense_model_name
from monolith_serving.entry.replica_source import (
    AgentReplicaSource,
    ReplicaSource,
    StaticReplicaSource,
    parse_ps_targets,
    v3_model_of,
)
from monolith_serving.entry.request_coalesce import RequestCoalescing
from monolith_serving.entry.request_parser import DEFAULT_MAX_FIDS_PER_REQUEST
from monolith_serving.entry.servicer import EntryModelServicer, EntryPredictionServicer, entry_config_from_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EntryServerConfig:
    model: EntryModelConfig | None
    num_ps: int
    ps_targets: tuple[tuple[str, ...], ...] = ()  # static discovery; empty -> agent
    dense_targets: tuple[str, ...] = ()  # static dense_0 replicas; empty -> agent (if any), else no dense
    agent_address: str = ""
    port: int = TFS_GRPC_PORT
    host: str = "0.0.0.0"
    grpc_socket_path: Path | None = None  # --grpc_socket_path: gRPC on this UNIX socket too
    metrics_port: int = 0
    rest: RestConfig | None = None  # --rest_api_port and its flags; None: no REST API (TF Serving's 0)
    grpc_channel_arguments: ChannelArguments = ()  # --grpc_channel_arguments
    tls: ServerTls | None = None  # --ssl_config_file; PS and dense replicas are dialed in plaintext all the same
    fetch_ps_retry: int = DEFAULT_FETCH_PS_RETRY
    coalesce: CoalesceConfig = field(default_factory=CoalesceConfig)
    coalesce_requests: RequestCoalescing = field(default_factory=RequestCoalescing)
    max_fids_per_request: int = DEFAULT_MAX_FIDS_PER_REQUEST
    poll_interval_s: float = 1.0
    ps_status_timeout_s: float = 1.0
    grace_s: float = 2.0
    # --model_config_file re-read this often when > 0 (TF Serving's --model_config_file_poll_wait_seconds).
    model_config_file: Path | None = None
    model_config_file_poll_wait_s: float = 0.0


class EntryServer:
    """Lifecycle of one entry process. ``start``/``stop`` are idempotent; ``async with`` works too."""

    def __init__(self, config: EntryServerConfig, metrics: EntryMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else EntryMetrics()
        entry_name = config.model.name if config.model is not None else "entry"
        self.replicas: ReplicaSource = (
            StaticReplicaSource(config.ps_targets)
            if config.ps_targets
            else AgentReplicaSource(
                agent_address=config.agent_address, num_ps=config.num_ps, model=v3_model_of(entry_name)
            )
        )
        self.channels = ChannelPool()
        self.ps_status = PsStatusTracker(
            entry_model_name=entry_name,
            replicas=self.replicas,
            channels=self.channels,
            timeout_s=config.ps_status_timeout_s,
        )
        retry = RetryPolicy(
            retry=config.fetch_ps_retry,
            min_attempt_s=(config.model.fetch_ps_timeout_ms if config.model else DEFAULT_FETCH_PS_TIMEOUT_MS) / 1000,
        )
        self.fanout = PsFanout(
            config=FanoutConfig(entry_model_name=entry_name, retry=retry, coalesce=config.coalesce),
            replicas=self.replicas,
            channels=self.channels,
            metrics=self.metrics,
            health=ReplicaHealth(),
            knows_version=self.ps_status.knows_version,
        )
        self.dense_replicas: ReplicaSource | None = None
        if config.dense_targets:
            self.dense_replicas = StaticReplicaSource([config.dense_targets])
        elif config.agent_address:
            self.dense_replicas = AgentReplicaSource(
                agent_address=config.agent_address, num_ps=1, model=v3_model_of(entry_name), kind="dense"
            )
        self.dense_channels = ChannelPool()
        self.dense_status: PsStatusTracker | None = None
        dense: DenseReplicas | None = None
        if self.dense_replicas is not None:
            self.dense_status = PsStatusTracker(
                entry_model_name=entry_name,
                replicas=self.dense_replicas,
                channels=self.dense_channels,
                timeout_s=config.ps_status_timeout_s,
                model_name=dense_model_name,
            )
            dense = DenseReplicas(
                config=RemoteDenseConfig(entry_model_name=entry_name, retry=retry),
                replicas=self.dense_replicas,
                channels=self.dense_channels,
                metrics=self.metrics,
                knows_version=self.dense_status.knows_version,
            )
        self.model = EntryModel(
            config=config.model,
            num_ps=config.num_ps,
            lookup=self.fanout,
            ps_ready=self.ps_status.ready,
            metrics=self.metrics,
            remote_dense=dense.bind if dense is not None else None,
            dense_ready=self.dense_status.ready if self.dense_status is not None else None,
            coalescing=config.coalesce_requests,
            max_fids_per_request=config.max_fids_per_request,
        )
        self._grpc: GrpcServer | None = None
        self._rest: RestGateway | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._config_poll_task: asyncio.Task[None] | None = None
        self._config_file = (
            ModelConfigFile(
                config.model_config_file,
                parse=self._file_models,
                apply=self._apply_file_models,
                hosted=self._hosted_models,
                logger=logger,
            )
            if config.model_config_file is not None and config.model_config_file_poll_wait_s > 0
            else None
        )
        self._dense_started = False
        self._stopped = False

    @property
    def port(self) -> int:
        if self._grpc is None:
            raise RuntimeError("server not started")
        return self._grpc.port

    @property
    def rest_port(self) -> int | None:
        """The REST API's port once started; None without one."""
        return self._rest.port if self._rest is not None else None

    def _file_models(self, proto: model_server_config_pb2.ModelServerConfig) -> tuple[EntryModelConfig, ...]:
        # Read as a HandleReloadConfigRequest is: settings the file cannot carry (--fetch_ps_timeout_ms,
        # --max_batch_size) come from the model configured now, or the one the entry started with.
        model = entry_config_from_proto(proto, self.model.config or self.config.model)
        return () if model is None else (model,)

    def _hosted_models(self) -> dict[str, EntryModelConfig]:
        model = self.model.config
        return {} if model is None else {model.name: model}

    async def _apply_file_models(self, models: Sequence[EntryModelConfig]) -> None:
        await self.model.reconfigure(models[0] if models else None)

    def servicers(self) -> tuple[EntryPredictionServicer, EntryModelServicer]:
        """The gRPC faces of this entry core; ``start`` serves them, a unified server hosts them itself."""
        return EntryPredictionServicer(self.model, self.metrics), EntryModelServicer(self.model)

    async def open(self) -> None:
        """The core without a gRPC server: replica sources, first status poll and model scan, control loop.
        Idempotent."""
        if self._loop_task is not None:
            return
        await self.replicas.start()
        await self._poll_status()
        await self._step("model_refresh", self._refresh_model)
        self._loop_task = asyncio.create_task(self._control_loop(), name="entry-control-loop")
        if self._config_file is not None:
            self._config_poll_task = asyncio.create_task(
                self._config_file_loop(self._config_file), name="entry-model-config-file-poll"
            )

    async def start(self) -> None:
        if self._grpc is not None:
            return
        await self.open()
        predict, models = self.servicers()
        add_servicers: list[Callable[[Any], None]] = [
            lambda s: prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(predict, s),  # type: ignore[no-untyped-call]
            lambda s: model_service_pb2_grpc.add_ModelServiceServicer_to_server(models, s),  # type: ignore[no-untyped-call]
        ]
        self._grpc = build_server(
            GrpcServerOptions(
                port=self.config.port,
                host=self.config.host,
                reflection_services=(
                    "tensorflow.serving.PredictionService",
                    "tensorflow.serving.ModelService",
                ),
                channel_arguments=self.config.grpc_channel_arguments,
                tls=self.config.tls,
                socket_path=self.config.grpc_socket_path,
            ),
            add_servicers,
            registry=self.metrics.registry,
        )
        if self.config.rest is not None:
            backend = LocalRestBackend(LocalCalls(add_servicers), RestApiMetrics(self.metrics.registry, "entry"))
            self._rest = RestGateway(backend, self.config.rest, metrics_registry=self.metrics.registry)
        await self._grpc.start()
        await self._grpc.set_serving(bool(self.model.served_versions))
        if self._rest is not None:
            await self._rest.start()
        if self.config.metrics_port:
            self._metrics_endpoint = serve_metrics(
                self.config.metrics_port, self.metrics.registry, host=self.config.host
            )
        logger.info(
            "entry listening on %s:%d%s%s (%d PS shards)",
            self.config.host,
            self._grpc.port,
            f" and unix:{self.config.grpc_socket_path}" if self.config.grpc_socket_path is not None else "",
            f", REST API on port {self.rest_port}" if self.rest_port is not None else "",
            self.config.num_ps,
        )

    async def _step(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        started = time.monotonic()
        try:
            await step()
        except Exception:
            # An unhandled error must never halt the control loop.
            logger.exception("control step %s failed", name)
            self.metrics.control_step_errors.labels(name).inc()
        self.metrics.control_step_seconds.labels(name).set(time.monotonic() - started)

    async def _retain_channels(self) -> None:
        await self.channels.retain(self.replicas.all_addresses())
        if self.dense_replicas is not None:
            await self.dense_channels.retain(self.dense_replicas.all_addresses())

    async def _poll_status(self) -> None:
        await self._step("ps_status", self.ps_status.poll)
        if self.dense_status is not None and self._dense_started:
            await self._step("dense_status", self.dense_status.poll)

    async def _refresh_model(self) -> None:
        """Scans for versions. Dense replicas are looked up (an agent HeartBeat(DENSE) every poll) only once a
        loaded version runs its network remotely (dense_alone); then at once, so that version is not held
        back a poll interval waiting for a dense status nobody asked for yet."""
        await self.model.refresh()
        if self.dense_replicas is None or self.dense_status is None or self._dense_started:
            return
        if self.model.needs_remote_dense:
            self._dense_started = True
            await self.dense_replicas.start()
            await self.dense_status.poll()
            await self.model.refresh()

    async def _control_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            await self._poll_status()
            await self._step("model_refresh", self._refresh_model)
            await self._step("retain_channels", self._retain_channels)
            if self._grpc is not None:
                await self._grpc.set_serving(bool(self.model.served_versions))

    async def _config_file_loop(self, config_file: ModelConfigFile[EntryModelConfig]) -> None:
        """A changed file switches the model as a HandleReloadConfigRequest would; one the entry refuses (a base
        path not there yet, a version label on a version not served) is logged and tried again next time."""
        while True:
            await asyncio.sleep(self.config.model_config_file_poll_wait_s)
            await self._step("model_config_file", config_file.poll_step)
            if self._grpc is not None:
                await self._grpc.set_serving(bool(self.model.served_versions))

    async def stop(self) -> None:
        """Stops what ``start`` got to: also a start cut short by SIGTERM during the first load. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await self._cancel_loop()
        draining = []
        if self._grpc is not None:
            draining.append(self._grpc.stop(self.config.grace_s))  # NOT_SERVING, stop accepting, drain
        if self._rest is not None:
            draining.append(self._rest.stop())  # the same, for --grace_s (RestConfig.drain_timeout_s)
        await asyncio.gather(*draining)
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        await self.close()

    async def _cancel_loop(self) -> None:
        for task in (self._config_poll_task, self._loop_task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Stops the core opened by ``open`` (control loop, channels, replica sources). Idempotent."""
        await self._cancel_loop()
        await self.channels.close()
        await self.replicas.stop()
        await self.dense_channels.close()
        if self.dense_replicas is not None:
            await self.dense_replicas.stop()
        self._dense_started = False

    async def __aenter__(self) -> EntryServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


# -- command line ------------------------------------------------------------------------------------

# Monolith's agent hands agent.conf's fetch_ps_timeout_ms and fetch_ps_retry to tensorflow_model_server under
# these names; the entry and the unified server take them as aliases of their own flags.
FETCH_PS_TFS_FLAGS = ("archon_entry_to_ps_rpc_timeout", "archon_entry_to_ps_rpc_retry")
DEFAULT_CONTROL_PERIOD_S = 1.0


def add_fetch_ps_flags(parser: argparse.ArgumentParser) -> None:
    """agent.conf's PS fetch settings as flags; the entry and the unified server both take them."""
    timeout_alias, retry_alias = FETCH_PS_TFS_FLAGS
    add_flag(
        parser,
        "--fetch_ps_timeout_ms",
        aliases=(f"--{timeout_alias}",),
        type=int,
        default=DEFAULT_FETCH_PS_TIMEOUT_MS,
        help="PS call deadline without a client deadline (default %(default)s)",
    )
    add_flag(
        parser,
        "--fetch_ps_retry",
        aliases=(f"--{retry_alias}",),
        type=int,
        default=DEFAULT_FETCH_PS_RETRY,
        help="PS retries on another replica (default %(default)s)",
    )


def add_coalesce_flags(parser: argparse.ArgumentParser) -> None:
    """Predict coalescing (``request_coalesce``) and PS lookup coalescing (``ps_coalesce``); the entry and the
    unified server both take these flags."""
    add_bool_flag(
        parser,
        "--coalesce_requests",
        default=True,
        help="run concurrent Predicts of one version as one lookup-pool-score pass while another pass is running "
        "(default true)",
    )
    add_flag(
        parser,
        "--coalesce_max_rows",
        type=int,
        default=RequestCoalescing.max_rows,
        help="examples in one coalesced Predict pass at most (default %(default)s)",
    )
    add_bool_flag(
        parser,
        "--coalesce_ps_lookups",
        default=True,
        help="send concurrent lookups to one PS shard as one call while another is in flight (default true)",
    )
    add_flag(
        parser,
        "--coalesce_max_fids",
        type=int,
        default=CoalesceConfig.max_fids,
        help="a coalesced PS lookup holding this many fids is sent at once (default %(default)s)",
    )


def coalesce_config_from_args(args: argparse.Namespace) -> CoalesceConfig:
    return CoalesceConfig(enabled=args.coalesce_ps_lookups, max_fids=args.coalesce_max_fids)


def request_coalescing_from_args(args: argparse.Namespace) -> RequestCoalescing:
    if args.coalesce_max_rows < 1:
        raise InvalidArgumentError(f"--coalesce_max_rows must be at least 1, got {args.coalesce_max_rows}")
    return RequestCoalescing(enabled=args.coalesce_requests, max_rows=args.coalesce_max_rows)


def configure(parser: argparse.ArgumentParser) -> None:
    add_server_flags(parser, default_port=None)
    add_host_flag(parser)
    add_grpc_socket_path_flag(parser)
    add_flag(parser, "--model_config_file", type=Path, default=None, help="text-format ModelServerConfig (one model)")
    add_flag(parser, "--model_name", default="entry", help="model name when no config file (default %(default)s)")
    add_flag(parser, "--model_base_path", type=Path, default=None, help="the entry sub-model folder (export/entry)")
    add_flag(
        parser,
        "--ps_targets",
        action="append",
        default=[],
        help="static PS replicas: one flag per shard in order, replicas comma-separated ('a:1,b:1;c:1' also works)",
    )
    add_flag(
        parser,
        "--dense_targets",
        default="",
        help="static dense_0 replicas (dense_alone), comma-separated host:port; default: ask the agent if any",
    )
    add_flag(
        parser,
        "--agent_address",
        default=None,
        help="AgentService to ask for PS replicas (default localhost:$PORT2) when --ps_targets is not given",
    )
    add_flag(parser, "--num_ps", type=int, default=None, help="number of PS shards (default: from the targets or spec)")
    add_fetch_ps_flags(parser)
    add_coalesce_flags(parser)
    add_flag(parser, "--max_batch_size", type=int, default=None, help="override the serving spec's max batch size")
    add_flag(
        parser,
        "--max_fids_per_request",
        type=int,
        default=DEFAULT_MAX_FIDS_PER_REQUEST,
        help="fids one Predict may carry, all features together, a SHARED list counted once per example; "
        "more is INVALID_ARGUMENT (default %(default)s)",
    )
    add_flag(
        parser,
        "--file_system_poll_wait_seconds",
        type=float,
        default=DEFAULT_CONTROL_PERIOD_S,
        help="control-loop period: version scan and PS status poll (default %(default)s; 0 or less: the default)",
    )
    add_flag(
        parser,
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read --model_config_file this often and switch to its model when it differs (0: never)",
    )
    add_flag(parser, "--grace_s", type=float, default=2.0, help="drain time on shutdown (default %(default)s)")
    add_rest_api_flags(parser)
    add_ssl_config_flag(parser)
    add_tfs_compat_flags(
        parser,
        honoured=(*FETCH_PS_TFS_FLAGS, *TFS_REST_FLAGS, "ssl_config_file", "model_config_file_poll_wait_seconds"),
    )


def control_period_from_flag(seconds: float) -> float:
    """The control loop's period from ``--file_system_poll_wait_seconds``. TF Serving reads 0 as "scan once" and
    less as "never scan", but this loop also polls PS status and promotes versions once their PS are ready, so it
    must keep running, and at 0 it would spin: 0 or less (NaN too) runs it at the default period."""
    return seconds if seconds > 0 else DEFAULT_CONTROL_PERIOD_S


def _model_config(args: argparse.Namespace) -> EntryModelConfig | None:
    defaults = EntryModelConfig(
        name=args.model_name,
        base_path=args.model_base_path or Path("."),
        fetch_ps_timeout_ms=args.fetch_ps_timeout_ms,
        max_batch_size=args.max_batch_size,
    )
    if args.model_config_file is not None:
        return entry_config_from_proto(read_model_server_config(args.model_config_file), defaults)
    if args.model_base_path is None:
        raise InvalidArgumentError("give --model_config_file or --model_base_path")
    return EntryModelConfig(
        name=args.model_name,
        base_path=args.model_base_path,
        policy=VersionPolicy(),
        fetch_ps_timeout_ms=args.fetch_ps_timeout_ms,
        max_batch_size=args.max_batch_size,
    )


def spec_num_ps(model: EntryModelConfig | None) -> int | None:
    """``num_ps`` of the newest version's serving spec; None without a model or a version."""
    if model is None:
        return None
    versions = list_versions(model.base_path)
    if not versions:
        return None
    return load_serving_spec(model.base_path / str(versions[-1])).num_ps


def max_fids_from_args(args: argparse.Namespace) -> int:
    if args.max_fids_per_request < 1:
        raise InvalidArgumentError(f"--max_fids_per_request must be at least 1, got {args.max_fids_per_request}")
    return int(args.max_fids_per_request)


def server_config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> EntryServerConfig:
    model = _model_config(args)
    targets = parse_ps_targets(args.ps_targets)
    dense_shards = parse_ps_targets([args.dense_targets], "--dense_targets") if args.dense_targets else ()
    if len(dense_shards) > 1:
        raise InvalidArgumentError("--dense_targets lists the replicas of dense_0 only (comma-separated, no ';')")
    agent_address = args.agent_address
    if not targets and agent_address is None:
        agent_address = agent_address_from_environment(environ)
        if agent_address is None:
            raise InvalidArgumentError("give --ps_targets (static) or --agent_address (or set $PORT2)")
    num_ps = args.num_ps
    if targets:
        if num_ps is not None and num_ps != len(targets):
            raise InvalidArgumentError(f"--num_ps {num_ps} but --ps_targets lists {len(targets)} shards")
        num_ps = len(targets)
    if num_ps is None:
        num_ps = spec_num_ps(model)
    if num_ps is None or num_ps < 1:
        raise InvalidArgumentError("cannot tell the number of PS shards: give --num_ps")
    port = main_grpc_port(args, environ)
    rest = rest_config_from_args(
        args,
        host=args.host,
        server_name="entry",
        drain_timeout_s=args.grace_s,
        other_ports={"--port": port, "--metrics_port": args.metrics_port},
    )
    return EntryServerConfig(
        model=model,
        num_ps=num_ps,
        ps_targets=targets,
        dense_targets=dense_shards[0] if dense_shards else (),
        agent_address=agent_address or "",
        port=port,
        host=args.host,
        grpc_socket_path=grpc_socket_path_from_args(args),
        metrics_port=args.metrics_port,
        rest=rest,
        grpc_channel_arguments=args.grpc_channel_arguments,
        tls=server_tls_from_flag(args.ssl_config_file),
        fetch_ps_retry=args.fetch_ps_retry,
        coalesce=coalesce_config_from_args(args),
        coalesce_requests=request_coalescing_from_args(args),
        max_fids_per_request=max_fids_from_args(args),
        poll_interval_s=control_period_from_flag(args.file_system_poll_wait_seconds),
        grace_s=args.grace_s,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_s=args.model_config_file_poll_wait_seconds,
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = server_config_from_args(args, dict(os.environ))
    except MonolithServingError as error:
        logger.error("%s", error.message)
        return 2
    warn_unused_tfs_flags(args, "entry", logger)
    if config.poll_interval_s != args.file_system_poll_wait_seconds:
        logger.warning(
            "--file_system_poll_wait_seconds %s: the entry's control loop (PS status, version scan) must keep "
            "running; it runs every %s s",
            args.file_system_poll_wait_seconds,
            config.poll_interval_s,
        )

    return serve_until_signal(lambda: EntryServer(config), "entry")
