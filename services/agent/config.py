"""From a resolved :class:`AgentConfig` to what the agent launches, derived once at start-up.

A :class:`ServerLaunchSpec` is one child model-server process: which command, which port, which
sub-models (written into its ``--model_config_file``) and which v1 replicas it stands for in the
registry. Nothing here starts processes or touches the network, so the mapping from agent.conf to
command lines is unit-testable.

v1 (deploy_type ps / entry / dense / mixed): one PS process hosts every PS task of this shard
(``i % num_shard == shard_id``) on one port, as Monolith's PS container hosts all of them in one
TF Serving; the entry process asks this agent's AgentService for PS replicas (and, with dense_alone,
dense replicas). In mixed mode the entry takes the main gRPC port (PORT3), the PS the ps port (PORT5)
and, with dense_alone, the dense server the dense port (PORT8). v3 (unified): one ``unified`` process (entry and
PS sub_graphs behind one port) whose model list follows the layout (``v3_server_spec``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from monolith_serving.agent.layout_filter import substitute_shard
from monolith_serving.core.agent_conf import AgentConfig, ConfError, DeployType, ServerPorts
from monolith_serving.core.cli_flags import parse_grpc_channel_arguments
from monolith_serving.core.conf_syntax import parse_int
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.monitoring_config import prometheus_path_from_file
from monolith_serving.core.serving_spec import DENSE_SUB_MODEL
from monolith_serving.core.zk_paths import ReplicaPath, ServerType, container_service_name, layout_path
from monolith_serving.discovery.replica_meta import ContainerServiceInfo
from monolith_serving.discovery.replica_updater import LocalReplica

__all__ = [
    "UNUSED_CONF_KEYS",
    "ChildFile",
    "ContainerIdentity",
    "ModelEntry",
    "RegisteredReplica",
    "ServerKind",
    "ServerLaunchSpec",
    "V1Plan",
    "assign_free_ports",
    "container_identity",
    "layout_watch_path",
    "local_replicas",
    "model_version_policy",
    "pick_free_port",
    "unused_conf_keys",
    "v1_plan",
    "v3_server_spec",
]


class ServerKind(StrEnum):
    """Which ``monolith-serving`` command a child runs."""

    PS = "ps"
    ENTRY = "entry"
    DENSE = "dense"
    UNIFIED = "unified"


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """One sub-model in a child's model config (``name`` is what GetModelStatus is asked about)."""

    name: str
    base_path: str
    policy: VersionPolicy


@dataclass(frozen=True, kw_only=True)
class RegisteredReplica:
    """A v1 registry node standing for one sub-model of a child."""

    server_type: ServerType
    task: int
    model_name: str


@dataclass(frozen=True)
class ChildFile:
    """A file the agent writes before starting a child, which the child reads at start (not its model config)."""

    path: Path
    text: str


@dataclass(frozen=True, kw_only=True)
class ServerLaunchSpec:
    """One child model server. ``argv()`` is the full command line; ``files`` are written before it starts."""

    kind: ServerKind
    name: str  # child name in logs and metrics ("ps", "entry")
    grpc_port: int
    model_config_path: Path
    models: tuple[ModelEntry, ...]
    replicas: tuple[RegisteredReplica, ...] = ()
    # Port of the replicas' archon_address: Monolith's PORT (PORT7 / PORT10 for the PS / dense of a mixed pod).
    # No child serves archon; None means "write the gRPC port" (local_replicas).
    archon_port: int | None = None
    flags: tuple[str, ...] = ()
    files: tuple[ChildFile, ...] = ()
    python: str = sys.executable

    def argv(self) -> list[str]:
        return [
            self.python,
            "-m",
            "monolith_serving",
            self.kind.value,
            f"--port={self.grpc_port}",
            f"--model_config_file={self.model_config_path}",
            *self.flags,
        ]


@dataclass(frozen=True, kw_only=True)
class ContainerIdentity:
    """Where a unified container appears in the v3 tree and what it publishes there."""

    bzid: str
    layout_path: str
    ctx_cluster: str
    ctx_id: str
    info: ContainerServiceInfo


@dataclass(frozen=True, kw_only=True)
class V1Plan:
    """The children of a v1 agent in start order (PS and dense before entry)."""

    servers: tuple[ServerLaunchSpec, ...]
    # The entry starts only once every PS task 0..num_ps-1 has an AVAILABLE replica.
    entry_waits_for_ps: bool
    # dense_alone: ... and dense:0 has one too.
    entry_waits_for_dense: bool = False

    def server(self, kind: ServerKind) -> ServerLaunchSpec | None:
        return next((s for s in self.servers if s.kind is kind), None)


def model_version_policy(config: AgentConfig) -> VersionPolicy:
    """agent.conf ``version_policy`` + ``version_data`` (versions to keep, or the one specific version)."""
    kind = PolicyKind(config.version_policy.value)
    if kind is PolicyKind.SPECIFIC:
        return VersionPolicy(kind, versions=(config.version_data,))
    return VersionPolicy(kind, num_versions=max(1, config.version_data))


def pick_free_port(host: str = "0.0.0.0") -> int:
    """A port free a moment ago. Racy by nature; used only for ports the platform left unset."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def assign_free_ports(config: AgentConfig, pick: Callable[[], int] = pick_free_port) -> AgentConfig:
    """Fill the ports the agent needs but neither conf nor environment set (local runs)."""
    mixed = config.deploy_type is DeployType.MIXED
    ps_ports = config.tfs_ps_ports
    if mixed and (ps_ports is None or ps_ports.grpc is None):
        ps_ports = dataclasses.replace(ps_ports or ServerPorts(), grpc=pick())
    dense_ports = config.tfs_dense_ports
    if mixed and config.dense_alone and (dense_ports is None or dense_ports.grpc is None):
        dense_ports = dataclasses.replace(dense_ports or ServerPorts(), grpc=pick())
    return dataclasses.replace(
        config,
        agent_port=config.agent_port if config.agent_port is not None else pick(),
        tfs_grpc_port=config.tfs_grpc_port if config.tfs_grpc_port is not None else pick(),
        tfs_ps_ports=ps_ports,
        tfs_dense_ports=dense_ports,
    )


def _require_port(port: int | None, key: str) -> int:
    if port is None:
        raise ConfError(f"port {key} is not set (conf key or environment); call assign_free_ports first")
    return port


def _base(config: AgentConfig) -> Path:
    assert config.base_path is not None  # AgentConfig requires base_path for server-launching deploy types
    return Path(config.base_path)


def _metrics_flags(metrics_port: int | None) -> tuple[str, ...]:
    """A PS or dense child's Prometheus endpoint sits on its HTTP port (PORT4; PORT6 / PORT9 in a mixed pod); they
    serve no REST API. The entry and unified children serve theirs there too (``_rest_api``)."""
    return (f"--metrics_port={metrics_port}",) if metrics_port else ()


def _poll_flag(config: AgentConfig) -> str:
    """``file_system_poll_wait_seconds`` of the entry, dense and unified children, at least 1 s.

    The entry's flag is its control-loop period (version scan and PS status poll): 0 or less would make that loop
    spin, and TF Serving's "0: scan once" would leave the entry on its first version for good. The unified
    container's one flag is also its entry side's period. The dense server gets the same period so that ``dense_0``
    finds the versions the entry moves to (a version with a remote dense network serves only once dense_0 has it).
    The PS child takes ``file_system_poll_wait_seconds_ps`` as given (0 or less: at start and on reload only).
    """
    return f"--file_system_poll_wait_seconds={max(config.file_system_poll_wait_seconds, 1)}"


def _load_threads_flag(config: AgentConfig) -> str:
    """``num_load_threads``: versions a ps/dense/unified child loads at once. TF Serving's 0 loads in its manager
    thread, one at a time, which is our servers' 1 (their default); the entry has no such flag."""
    return f"--num_load_threads={max(config.num_load_threads, 1)}"


# TF Serving flags of agent.conf that our model servers take too: passed on to every child as given.
_PASSED_TFS_FLAGS = ("grpc_channel_arguments",)
# ... and those of the REST API, which only the entry and unified children serve (``_rest_api``).
_REST_TFS_FLAGS = ("rest_api_timeout_in_ms", "monitoring_config_file")

# Where the children's metrics are scraped (Prometheus configs, chart annotations): /metrics on the HTTP port.
CHILD_METRICS_PATH = "/metrics"
_CHILD_MONITORING_CONFIG = f'prometheus_config {{\n  enable: true\n  path: "{CHILD_METRICS_PATH}"\n}}\n'


def _tfs_flags(config: AgentConfig) -> tuple[str, ...]:
    """``--grpc_channel_arguments=...`` when the conf sets it (checked here: a bad value would make every child
    exit 2 in turn, a restart loop, instead of one ConfError at start)."""
    flags = []
    for key in _PASSED_TFS_FLAGS:
        value = config.tfs_flags.get(key)
        if value is None:
            continue
        try:
            parse_grpc_channel_arguments(value)
        except ValueError as error:
            raise ConfError(f"{config.where(key)}: key {key!r}: {error}") from None
        flags.append(f"--{key}={value}")
    return tuple(flags)


def _rest_api(
    config: AgentConfig, http_port: int | None, work_dir: Path, name: str
) -> tuple[tuple[str, ...], tuple[ChildFile, ...]]:
    """Flags and files of an entry or unified child's REST API on its HTTP port (PORT4).

    Monolith's agent gives tensorflow_model_server ``--rest_api_port`` = PORT4, so clients of a Monolith pod find the
    TF Serving REST API there. The same port carries the child's metrics, which Prometheus scrapes at /metrics on
    every child: through a MonitoringConfig the agent writes beside the model config, or through the conf's own
    ``monitoring_config_file``, which then decides where they are (or that they are not served). The conf's
    ``rest_api_timeout_in_ms`` goes along. Values are checked here, so a bad one is one ConfError at start instead
    of a child exiting 2 in a restart loop. No HTTP port: no REST API and no metrics, as before.
    """
    if not http_port:
        return (), ()
    flags = [f"--rest_api_port={http_port}"]
    timeout = config.tfs_flags.get("rest_api_timeout_in_ms")
    if timeout is not None:
        try:
            timeout_ms = parse_int(timeout)
        except ValueError as error:
            raise ConfError(
                f"{config.where('rest_api_timeout_in_ms')}: key 'rest_api_timeout_in_ms': {error}"
            ) from None
        if timeout_ms <= 0:
            raise ConfError(
                f"{config.where('rest_api_timeout_in_ms')}: key 'rest_api_timeout_in_ms' must be > 0, got {timeout_ms}"
            )
        flags.append(f"--rest_api_timeout_in_ms={timeout_ms}")
    own = config.tfs_flags.get("monitoring_config_file")
    if own is not None:
        try:
            prometheus_path_from_file(own)
        except InvalidArgumentError as error:
            raise ConfError(
                f"{config.where('monitoring_config_file')}: key 'monitoring_config_file': {error.message}"
            ) from None
        return (*flags, f"--monitoring_config_file={own}"), ()
    written = ChildFile(work_dir / f"{name}_monitoring_config.pbtxt", _CHILD_MONITORING_CONFIG)
    return (*flags, f"--monitoring_config_file={written.path}"), (written,)


# agent.conf keys parsed (Monolith confs set them, so they must load) that nothing in any deploy type uses: our
# model servers are not tensorflow_model_server and have no such setting. docs/agent_conf.md says why for each.
UNUSED_CONF_KEYS = frozenset(
    {
        "enable_batching",
        "max_num_load_retries",
        "load_retry_interval_micros",
        "num_unload_threads",
        "enable_model_warmup",
        "grpc_max_threads",
        "fetch_ps_long_conn_num",
        "fetch_ps_long_conn_enable",
        "aio_thread_num",
        "use_metrics",
        "dense_service_num",
    }
)


def unused_conf_keys(config: AgentConfig) -> tuple[str, ...]:
    """The keys ``config``'s conf set that have no effect, sorted: those in ``UNUSED_CONF_KEYS`` and every TF
    Serving pass-through flag (``tfs_flags``). A key some deploy type uses is never named, also on an agent of
    another type: one conf is often shared by PS and entry agents through ``include``."""
    used = {*_PASSED_TFS_FLAGS, *_REST_TFS_FLAGS}
    return tuple(sorted({*(config.given_keys & UNUSED_CONF_KEYS), *(set(config.tfs_flags) - used)}))


def _ps_spec(
    config: AgentConfig, port: int, work_dir: Path, metrics_port: int | None, archon_port: int | None
) -> ServerLaunchSpec:
    policy = model_version_policy(config)
    tasks = config.ps_tasks()
    return ServerLaunchSpec(
        kind=ServerKind.PS,
        name="ps",
        grpc_port=port,
        model_config_path=work_dir / "ps_model_config.pbtxt",
        models=tuple(
            ModelEntry(name=f"ps_{i}", base_path=str(_base(config) / f"ps_{i}"), policy=policy) for i in tasks
        ),
        replicas=tuple(RegisteredReplica(server_type=ServerType.PS, task=i, model_name=f"ps_{i}") for i in tasks),
        archon_port=archon_port,
        flags=(
            f"--num_ps={config.num_ps}",
            f"--file_system_poll_wait_seconds={config.file_system_poll_wait_seconds_ps}",
            _load_threads_flag(config),
            *_metrics_flags(metrics_port),
            *_tfs_flags(config),
        ),
    )


def _entry_spec(config: AgentConfig, port: int, work_dir: Path, http_port: int | None) -> ServerLaunchSpec:
    assert config.agent_port is not None
    rest_flags, rest_files = _rest_api(config, http_port, work_dir, "entry")
    return ServerLaunchSpec(
        kind=ServerKind.ENTRY,
        name="entry",
        grpc_port=port,
        model_config_path=work_dir / "entry_model_config.pbtxt",
        models=(ModelEntry(name="entry", base_path=str(_base(config) / "entry"), policy=model_version_policy(config)),),
        replicas=(RegisteredReplica(server_type=ServerType.ENTRY, task=0, model_name="entry"),),
        archon_port=config.archon_port,
        flags=(
            f"--num_ps={config.num_ps}",
            f"--agent_address=127.0.0.1:{config.agent_port}",
            f"--fetch_ps_timeout_ms={config.fetch_ps_timeout_ms}",
            f"--fetch_ps_retry={config.fetch_ps_retry}",
            _poll_flag(config),
            *rest_flags,
            *_tfs_flags(config),
        ),
        files=rest_files,
    )


def _dense_spec(
    config: AgentConfig, port: int, work_dir: Path, metrics_port: int | None, archon_port: int | None
) -> ServerLaunchSpec:
    """The dense server of a dense_alone model: sub-model ``dense_0``, registered as ``dense:0``."""
    return ServerLaunchSpec(
        kind=ServerKind.DENSE,
        name="dense",
        grpc_port=port,
        model_config_path=work_dir / "dense_model_config.pbtxt",
        models=(
            ModelEntry(
                name=DENSE_SUB_MODEL,
                base_path=str(_base(config) / DENSE_SUB_MODEL),
                policy=model_version_policy(config),
            ),
        ),
        replicas=(RegisteredReplica(server_type=ServerType.DENSE, task=0, model_name=DENSE_SUB_MODEL),),
        archon_port=archon_port,
        flags=(
            _poll_flag(config),
            _load_threads_flag(config),
            *_metrics_flags(metrics_port),
            *_tfs_flags(config),
        ),
    )


def v1_plan(config: AgentConfig, *, work_dir: Path) -> V1Plan:
    """Children of a v1 agent. Needs a resolved config with ports assigned."""
    if config.deploy_type is DeployType.UNIFIED:
        raise ConfError(f"{config.where('deploy_type')}: deploy_type unified is a v3 agent, not v1")
    if config.deploy_type is DeployType.DENSE and not config.dense_alone:
        raise ConfError(f"{config.where('deploy_type')}: key 'deploy_type': deploy_type dense needs dense_alone true")
    _require_port(config.agent_port, "agent_port (PORT2)")
    main_port = _require_port(config.tfs_grpc_port, "tfs_grpc_port (PORT3)")
    if config.deploy_type is DeployType.PS:
        ps = _ps_spec(config, main_port, work_dir, config.tfs_http_port, config.archon_port)
        return V1Plan(servers=(ps,), entry_waits_for_ps=False)
    if config.deploy_type is DeployType.DENSE:
        dense_only = _dense_spec(config, main_port, work_dir, config.tfs_http_port, config.archon_port)
        return V1Plan(servers=(dense_only,), entry_waits_for_ps=False)
    if config.deploy_type is DeployType.ENTRY:
        return V1Plan(
            servers=(_entry_spec(config, main_port, work_dir, config.tfs_http_port),),
            entry_waits_for_ps=True,
            entry_waits_for_dense=config.dense_alone,
        )
    ps_ports, dense_ports = config.tfs_ps_ports or ServerPorts(), config.tfs_dense_ports or ServerPorts()
    ps_port = _require_port(ps_ports.grpc, "PS port (PORT5)")
    dense: tuple[ServerLaunchSpec, ...] = ()
    if config.dense_alone:
        dense_port = _require_port(dense_ports.grpc, "dense port (PORT8)")
        dense = (_dense_spec(config, dense_port, work_dir, dense_ports.http, dense_ports.archon),)
    return V1Plan(
        servers=(
            _ps_spec(config, ps_port, work_dir, ps_ports.http, ps_ports.archon),
            *dense,
            _entry_spec(config, main_port, work_dir, config.tfs_http_port),
        ),
        entry_waits_for_ps=True,
        entry_waits_for_dense=config.dense_alone,
    )


def v3_server_spec(config: AgentConfig, *, work_dir: Path) -> ServerLaunchSpec:
    """The unified container's model server; its models (entry, ps_i, dense_i) come from the layout at run time.
    Its entry core asks this agent for PS and dense replicas."""
    port = _require_port(config.tfs_grpc_port, "tfs_grpc_port (PORT3)")
    _require_port(config.agent_port, "agent_port (PORT2)")
    rest_flags, rest_files = _rest_api(config, config.tfs_http_port, work_dir, "unified")
    return ServerLaunchSpec(
        kind=ServerKind.UNIFIED,
        name="unified",
        grpc_port=port,
        model_config_path=work_dir / "unified_model_config.pbtxt",
        models=(),
        flags=(
            f"--agent_address=127.0.0.1:{config.agent_port}",
            f"--fetch_ps_timeout_ms={config.fetch_ps_timeout_ms}",
            f"--fetch_ps_retry={config.fetch_ps_retry}",
            _poll_flag(config),
            _load_threads_flag(config),
            *rest_flags,
            *_tfs_flags(config),
        ),
        files=rest_files,
    )


def local_replicas(
    config: AgentConfig,
    spec: ServerLaunchSpec,
    *,
    host: str,
    host_ipv6: str | None = None,
    replica_id: int | None = None,
) -> tuple[LocalReplica, ...]:
    """The v1 registry nodes of one child (dc_aware adds idc/cluster to the path), under ``replica_id`` (default:
    ``config.replica_id``; the v1 agent passes the id its entry adopted when the environment gave none).

    ``archon_address`` is always written, as Monolith does (its readers put it into address lists unchecked): on the
    child's archon port (``spec.archon_port``: PORT, or PORT7 / PORT10 for the PS / dense of a mixed pod, as Monolith
    registers them), else on its gRPC port. No child serves archon, so the value only keeps those readers working."""
    assert config.bzid is not None and config.base_name is not None  # required with a registry
    idc = config.idc if config.dc_aware else None
    cluster = config.cluster if config.dc_aware else None
    address = f"{host}:{spec.grpc_port}"
    ipv6 = f"[{host_ipv6}]:{spec.grpc_port}" if host_ipv6 else None
    archon_port = spec.archon_port if spec.archon_port is not None else spec.grpc_port
    archon = f"{host}:{archon_port}"
    archon_ipv6 = f"[{host_ipv6}]:{archon_port}" if host_ipv6 else None
    return tuple(
        LocalReplica(
            path=ReplicaPath(
                bzid=config.bzid,
                base_name=config.base_name,
                server_type=r.server_type,
                task=r.task,
                replica_id=config.replica_id if replica_id is None else replica_id,
                idc=idc,
                cluster=cluster,
            ),
            model_name=r.model_name,
            address=address,
            address_ipv6=ipv6,
            archon_address=archon,
            archon_address_ipv6=archon_ipv6,
        )
        for r in spec.replicas
    )


def layout_watch_path(config: AgentConfig) -> str:
    """The layout a unified container follows: ``layout_pattern`` with ``${shard_id}``/``${shard_num}``
    substituted; an absolute path is used as is, a bare name means ``/{bzid}/layouts/{name}``."""
    if not config.bzid or not config.layout_pattern:
        raise ConfError(f"{config.where('layout_pattern')}: key 'layout_pattern' is required for deploy_type unified")
    pattern = substitute_shard(config.layout_pattern, shard_id=config.shard_id, shard_num=config.num_shard or 1)
    if pattern.startswith("/"):
        return pattern.rstrip("/")
    try:
        return layout_path(config.bzid, pattern)
    except InvalidArgumentError as exc:
        raise ConfError(f"{config.where('layout_pattern')}: key 'layout_pattern': {exc.message}") from None


def container_identity(config: AgentConfig, *, host: str, layout: str) -> ContainerIdentity:
    """The container's v3 names, in Monolith's formats (``utils.py``, ``AgentConfig.container_cluster/container_id``).

    ctx_cluster is ``{psm};{idc};{cluster}`` (TCE_PSM, else ``unknown``; an unset idc or cluster is written ``None``,
    as Monolith writes it). ctx_id is the pod name, else ``{host}_{grpc_port}`` where Monolith uses the bare host IP
    (two containers on one host would share it). Neither may contain ``:``: Monolith's readers split binding names
    with ``split(":")[:3]``. ConfError when the environment makes one that is not a valid name.
    """
    assert config.bzid is not None and config.tfs_grpc_port is not None and config.agent_port is not None
    debug = {"shard_id": config.shard_id, "replica_id": config.replica_id, "pid": os.getpid()}
    ctx_cluster = f"{config.psm or 'unknown'};{config.idc};{config.cluster}"
    ctx_id = config.pod_name or f"{host}_{config.tfs_grpc_port}".replace(":", "_")  # an IPv6 host has ':'
    try:
        if ":" in ctx_cluster or ":" in ctx_id:
            raise InvalidArgumentError("must not contain ':'")
        container_service_name(ctx_cluster, ctx_id)
    except InvalidArgumentError as exc:
        raise ConfError(
            f"v3 container name {ctx_cluster!r}:{ctx_id!r} (from TCE_PSM, TCE_INTERNAL_IDC, the cluster and "
            f"MY_POD_NAME): {exc.message}"
        ) from None
    return ContainerIdentity(
        bzid=config.bzid,
        layout_path=layout,
        ctx_cluster=ctx_cluster,
        ctx_id=ctx_id,
        info=ContainerServiceInfo(
            grpc=f"{host}:{config.tfs_grpc_port}",
            http=f"{host}:{config.tfs_http_port}" if config.tfs_http_port else None,
            # Always set, as Monolith does; no archon server: the gRPC port when PORT is unset (see local_replicas).
            archon=f"{host}:{config.archon_port if config.archon_port is not None else config.tfs_grpc_port}",
            agent=f"{host}:{config.agent_port}",
            idc=config.idc,
            debug_info=json.dumps(debug, sort_keys=True),
        ),
    )
