"""agent.conf: the typed, frozen configuration of one agent, and the environment rules.

Two steps, both pure, both called once from ``main()``:

1. :func:`load_agent_config` parses the file (syntax in :mod:`monolith_serving.core.conf_syntax`)
   into an :class:`AgentConfig` and checks everything the file alone decides.
2. :func:`resolve_environment` fills what the platform decides (ports, shard and replica ids, host
   addresses, idc/cluster) from an explicit ``env`` mapping -- ``main()`` passes ``os.environ`` -- and
   checks what depends on it (shard id within num_shard, dc_aware needs idc and cluster).
   The variables and their precedence are Monolith's (``monolith/agent_service/utils.py``, ``AgentConfig``).

Neither step picks free ports: a port left unset stays ``None`` and the launcher binds port 0.
Every bad value raises :class:`ConfError` naming the key (or environment variable), the file and line.
See docs/agent_conf.md for the key table and the defaults chosen where Monolith is silent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from monolith_serving.core.conf_syntax import (
    ConfEntry,
    ConfError,
    is_none,
    parse_bool,
    parse_conf_file,
    parse_float,
    parse_int,
)
from monolith_serving.core.errors import FailedPreconditionError
from monolith_serving.core.zk_paths import UNSET_REPLICA_ID

__all__ = [
    "DEFAULT_FETCH_PS_RETRY",
    "DEFAULT_FETCH_PS_TIMEOUT_MS",
    "AgentConfig",
    "ConfError",
    "DeployType",
    "DiscoveryKind",
    "ServerPorts",
    "VersionPolicy",
    "config_from_entries",
    "load_agent_config",
    "replica_id_from_pod_name",
    "resolve_environment",
]

# agent.conf's fetch_ps_retry and fetch_ps_timeout_ms defaults; also the entry's and the unified server's flag
# defaults (the timeout is the PS and remote dense call deadline when the client sets none).
DEFAULT_FETCH_PS_RETRY = 2
DEFAULT_FETCH_PS_TIMEOUT_MS = 200

_log = logging.getLogger(__name__)


class DeployType(StrEnum):
    """What one agent runs. ``mixed`` hosts entry and this shard's PS tasks together."""

    ENTRY = "entry"
    PS = "ps"
    DENSE = "dense"
    MIXED = "mixed"
    UNIFIED = "unified"


class DiscoveryKind(StrEnum):
    """Which registry the agent publishes to and reads from."""

    ZK = "zk"
    CONSUL = "consul"
    STATIC = "static"


class VersionPolicy(StrEnum):
    """TF Serving servable version policies plus Monolith's ``latest_once`` (v3 PS)."""

    LATEST = "latest"
    LATEST_ONCE = "latest_once"
    ALL = "all"
    SPECIFIC = "specific"


@dataclass(frozen=True, kw_only=True)
class ServerPorts:
    """Ports of one extra server process (mixed mode); ``None`` means "let the launcher bind 0"."""

    grpc: int | None = None
    http: int | None = None
    archon: int | None = None


def _frozen_map(items: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Everything one agent needs, immutable after start-up.

    Field names are the agent.conf keys so a key can be found by grepping. Fields in the
    "environment" group are filled by :func:`resolve_environment` (or may be given as conf keys).
    """

    # --- identity and model location
    bzid: str | None = None
    base_name: str | None = None
    base_path: str | None = None
    num_ps: int = 1
    num_shard: int | None = None  # None until resolve_environment (conf, MONOLITH_HOST_SHARD_N, else 1)
    deploy_type: DeployType
    stand_alone_serving: bool = False
    dense_alone: bool = False
    dense_service_num: int = 3  # Monolith's dense pod runs this many dense servers; ours runs one (no effect)
    # --- registry
    discovery: DiscoveryKind = DiscoveryKind.STATIC
    zk_servers: str | None = None
    consul_address: str = "127.0.0.1:8500"
    agent_version: int = 1
    dc_aware: bool = False
    layout_pattern: str | None = None
    layout_filters: tuple[str, ...] = ()
    # --- agent behaviour (units as in Monolith: seconds unless the name says otherwise)
    update_model_status_interval: float = 1.0
    max_waiting_sec: int = 1200
    version_policy: VersionPolicy = VersionPolicy.LATEST
    version_data: int = 1
    # --- entry -> PS fetch
    fetch_ps_timeout_ms: int = DEFAULT_FETCH_PS_TIMEOUT_MS
    fetch_ps_retry: int = DEFAULT_FETCH_PS_RETRY
    fetch_ps_long_conn_num: int = 100
    fetch_ps_long_conn_enable: bool = True
    aio_thread_num: int = 30
    use_metrics: bool = True
    # --- model server (TF Serving flag names). Only the poll periods and num_load_threads reach our servers
    # (monolith_serving.agent.config); the others are parsed so Monolith confs load, and the agent warns about
    # them at start (agent.config.unused_conf_keys; docs/agent_conf.md says why each has no effect).
    file_system_poll_wait_seconds: int = 1
    file_system_poll_wait_seconds_ps: int = 0
    enable_batching: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    num_load_threads: int = 0  # TF Serving's 0 (load in the manager thread, one at a time) is our servers' 1
    num_unload_threads: int = 0
    enable_model_warmup: bool = True
    grpc_max_threads: int = 0  # 0: server default
    tfs_flags: Mapping[str, str] = field(default_factory=_frozen_map, hash=False)
    # --- environment (see resolve_environment)
    archon_port: int | None = None
    agent_port: int | None = None
    tfs_grpc_port: int | None = None
    tfs_http_port: int | None = None
    tfs_ps_ports: ServerPorts | None = None
    tfs_dense_ports: ServerPorts | None = None
    shard_id: int = 0
    replica_id: int = UNSET_REPLICA_ID  # -1: none given (a v1 entry then adopts its sequential node's number)
    host_ip: str | None = None
    host_ipv6: str | None = None
    pod_name: str | None = None
    idc: str | None = None
    cluster: str | None = None
    psm: str | None = None  # TCE_PSM: the service name, first part of a v3 container's ctx_cluster
    # --- provenance for error messages: key -> "file:line"; not part of equality
    conf_path: str | None = field(default=None, compare=False)
    origins: Mapping[str, str] = field(default_factory=_frozen_map, compare=False, hash=False, repr=False)
    # Keys the conf gave a value (aliases resolved; `none` and empty values excluded), e.g. to warn about the
    # ones that have no effect. Empty for a config not built from a conf.
    given_keys: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def ps_tasks(self) -> tuple[int, ...]:
        """PS task ids this agent serves: ``i`` in ``range(num_ps)`` with ``i % num_shard == shard_id``.

        Empty for deploy types that run no PS. Needs num_shard, i.e. a resolved config.
        """
        if self.deploy_type not in (DeployType.PS, DeployType.MIXED):
            return ()
        if self.num_shard is None:
            raise FailedPreconditionError("ps_tasks() needs num_shard; call resolve_environment() first")
        return tuple(i for i in range(self.num_ps) if i % self.num_shard == self.shard_id)

    def where(self, key: str) -> str:
        """``file:line`` of ``key`` when it came from a file, else the conf path, for messages."""
        return self.origins.get(key) or self.conf_path or "<agent config>"


# --------------------------------------------------------------------------- conf keys -> fields


def _parse_str(value: str) -> str:
    return value


def _parse_deploy_type(value: str) -> DeployType:
    try:
        return DeployType(value.lower())
    except ValueError:
        raise ValueError(f"must be one of {', '.join(d.value for d in DeployType)}") from None


def _parse_discovery(value: str) -> DiscoveryKind:
    try:
        return DiscoveryKind(value.lower())
    except ValueError:
        raise ValueError(f"must be one of {', '.join(d.value for d in DiscoveryKind)}") from None


def _parse_version_policy(value: str) -> VersionPolicy:
    try:
        return VersionPolicy(value.lower())
    except ValueError:
        raise ValueError(f"must be one of {', '.join(v.value for v in VersionPolicy)}") from None


_SCALAR_KEYS: Mapping[str, Callable[[str], object]] = {
    "bzid": _parse_str,
    "base_name": _parse_str,
    "base_path": _parse_str,
    "num_ps": parse_int,
    "num_shard": parse_int,
    "deploy_type": _parse_deploy_type,
    "stand_alone_serving": parse_bool,
    "dense_alone": parse_bool,
    "discovery": _parse_discovery,
    "zk_servers": _parse_str,
    "consul_address": _parse_str,
    "agent_version": parse_int,
    "dc_aware": parse_bool,
    "layout_pattern": _parse_str,
    "update_model_status_interval": parse_float,
    "max_waiting_sec": parse_int,
    "version_policy": _parse_version_policy,
    "version_data": parse_int,
    "fetch_ps_timeout_ms": parse_int,
    "fetch_ps_retry": parse_int,
    "fetch_ps_long_conn_num": parse_int,
    "fetch_ps_long_conn_enable": parse_bool,
    "aio_thread_num": parse_int,
    "use_metrics": parse_bool,
    "dense_service_num": parse_int,
    "file_system_poll_wait_seconds": parse_int,
    "file_system_poll_wait_seconds_ps": parse_int,
    "enable_batching": parse_bool,
    "max_num_load_retries": parse_int,
    "load_retry_interval_micros": parse_int,
    "num_load_threads": parse_int,
    "num_unload_threads": parse_int,
    "enable_model_warmup": parse_bool,
    "grpc_max_threads": parse_int,
    # Ports are normally environment-assigned; a conf value wins (handy for local runs and tests).
    "archon_port": parse_int,
    "agent_port": parse_int,
    "tfs_grpc_port": parse_int,
    "tfs_http_port": parse_int,
}
_LIST_KEYS = frozenset({"layout_filters"})
_ALIASES: Mapping[str, str] = {"server_type": "deploy_type"}

# TF Serving model-server flags that have no typed field: kept verbatim in tfs_flags so Monolith confs load. No
# child uses them (our servers are not tensorflow_model_server); the agent names them in its start-up warning.
_TFS_PASS_THROUGH = frozenset(
    {
        "allow_version_labels_for_unavailable_models",
        "batching_parameters_file",
        "model_config_file_poll_wait_seconds",
        "flush_filesystem_caches",
        "tensorflow_session_parallelism",
        "tensorflow_intra_op_parallelism",
        "tensorflow_inter_op_parallelism",
        "tensorflow_session_config_file",
        "ssl_config_file",
        "use_alts_credentials",
        "platform_config_file",
        "per_process_gpu_memory_fraction",
        "allow_growth",
        "saved_model_tags",
        "grpc_channel_arguments",
        "grpc_socket_path",
        "rest_api_num_threads",
        "rest_api_timeout_in_ms",
        "num_request_iterations_for_warmup",
        "monitoring_config_file",
        "remove_unused_fields_from_bundle_metagraph",
        "enable_signature_method_name_check",
        "xla_cpu_compilation_enabled",
        "enable_profiler",
        "mixed_precision",
        "enable_grpc_healthcheck_service",
        "thread_pool_factory_config_file",
        "version",
    }
)
# TF Serving flags the agent itself derives (ports, model list); a conf value would be misleading.
_AGENT_OWNED_TFS_FLAGS = frozenset({"port", "rest_api_port", "model_config_file", "model_name", "model_base_path"})

# Keys Monolith reads that change which models it loads (an extra "deep rough sort" model next to entry, ps_i or
# dense_0). We load no such model, so a conf giving them a value gets a warning: the agent does not do what it asks.
_UNSUPPORTED_MONOLITH_KEYS = frozenset(
    {
        "rough_sort_model_name",
        "rough_sort_model_local_path",
        "rough_sort_model_loaded_server",
        "rough_sort_model_p2p_path",
        "rough_sort_resource_constrained",
    }
)

# Lower bounds of numeric fields. Negative poll/retry intervals are accepted as TF Serving accepts them (what the
# agent makes of them: docs/agent_conf.md).
_MINIMUMS: Mapping[str, float] = {
    "num_ps": 1,
    "num_shard": 1,
    "max_waiting_sec": 0,
    "version_data": 0,
    "fetch_ps_timeout_ms": 1,
    "fetch_ps_retry": 0,
    "fetch_ps_long_conn_num": 1,
    "aio_thread_num": 1,
    "dense_service_num": 1,
    "max_num_load_retries": 0,
    "num_load_threads": 0,
    "num_unload_threads": 0,
    "grpc_max_threads": 0,
    "shard_id": 0,
    "replica_id": UNSET_REPLICA_ID,
}
_PORT_FIELDS = ("archon_port", "agent_port", "tfs_grpc_port", "tfs_http_port")
_SERVER_LAUNCHING = frozenset({DeployType.ENTRY, DeployType.PS, DeployType.DENSE, DeployType.MIXED})


def load_agent_config(path: str | Path) -> AgentConfig:
    """Parse and check the agent.conf at ``path`` (and its includes); environment not applied."""
    return config_from_entries(parse_conf_file(path), conf_path=str(path))


def config_from_entries(entries: Iterable[ConfEntry], *, conf_path: str | None = None) -> AgentConfig:
    """Build an AgentConfig from parsed entries and check what the file alone decides.

    Rules: unknown keys are logged at debug and ignored, except Monolith's ``rough_sort_*`` keys, which warn
    (unsupported); ``none`` leaves a key at its default; a scalar key repeated with a different value is an error
    (only layout_filters is a list).
    """
    grouped: dict[str, list[ConfEntry]] = {}
    for entry in entries:
        key = _ALIASES.get(entry.key, entry.key)
        if key in _SCALAR_KEYS or key in _LIST_KEYS or key in _TFS_PASS_THROUGH:
            grouped.setdefault(key, []).append(entry)
        elif key in _AGENT_OWNED_TFS_FLAGS:
            _log.warning("%s: ignoring %r: the agent sets this model-server flag itself", entry.where, key)
        elif key in _UNSUPPORTED_MONOLITH_KEYS:
            if _asks_for_rough_sort(key, entry.value):
                _log.warning(
                    "%s: key %r is not supported and ignored: Monolith loads an extra rough-sort model with it, "
                    "this agent loads none (docs/agent_conf.md)",
                    entry.where,
                    key,
                )
        else:
            _log.debug("%s: ignoring unknown key %r", entry.where, entry.key)

    kwargs: dict[str, Any] = {}
    tfs_flags: dict[str, str] = {}
    origins = {key: group[0].where for key, group in grouped.items()}
    for key, group in grouped.items():
        if key in _LIST_KEYS:
            kwargs[key] = tuple(e.value for e in group if not is_none(e.value))
            continue
        entry = _single(key, group)
        if is_none(entry.value):
            if not entry.value:  # a key written without a value (a template left unfilled?): unset, but say so
                _log.warning("%s: key %r has no value: left at its default", entry.where, entry.key)
            continue
        if key in _TFS_PASS_THROUGH:
            tfs_flags[key] = entry.value
            continue
        try:
            kwargs[key] = _SCALAR_KEYS[key](entry.value)
        except ValueError as exc:
            raise entry.error(f"bad value {entry.value!r}: {exc}") from None

    given_keys = frozenset({*(key for key, value in kwargs.items() if value != ()), *tfs_flags})
    where_file = conf_path or "<agent config>"
    if kwargs.get("stand_alone_serving"):
        if kwargs.get("deploy_type", DeployType.MIXED) is not DeployType.MIXED:
            _log.info("%s: stand_alone_serving is true, so deploy_type becomes mixed", origins["deploy_type"])
        kwargs["deploy_type"] = DeployType.MIXED
    elif "deploy_type" not in kwargs:
        raise ConfError(f"{where_file}: key 'deploy_type' is required (or set stand_alone_serving true)")
    if "discovery" not in kwargs:
        kwargs["discovery"] = DiscoveryKind.ZK if kwargs.get("zk_servers") else DiscoveryKind.STATIC
    if "agent_version" not in kwargs and kwargs["deploy_type"] is DeployType.UNIFIED:
        kwargs["agent_version"] = 3  # unified containers are what Monolith calls agent v3

    config = AgentConfig(
        **kwargs,
        tfs_flags=_frozen_map(tfs_flags),
        conf_path=conf_path,
        origins=_frozen_map(origins),
        given_keys=given_keys,
    )
    _check_file_rules(config)
    return config


def _asks_for_rough_sort(key: str, value: str) -> bool:
    """Whether a rough_sort_* line asks for something: a value other than ``none`` (and, for the boolean, not false)."""
    if is_none(value):
        return False
    if key == "rough_sort_resource_constrained":
        try:
            return parse_bool(value)
        except ValueError:
            return True
    return True


def _single(key: str, group: list[ConfEntry]) -> ConfEntry:
    first = group[0]
    for other in group[1:]:
        if other.value != first.value:
            raise other.error(f"given again with a different value (first at {first.where}: {first.value!r})")
    return first


def _fail(config: AgentConfig, key: str, problem: str) -> ConfError:
    return ConfError(f"{config.where(key)}: key {key!r}: {problem}")


def _check_minimums(config: AgentConfig) -> None:
    for key, minimum in _MINIMUMS.items():
        value = getattr(config, key)
        if value is not None and value < minimum:
            raise _fail(config, key, f"must be >= {minimum:g}, got {value}")
    for key in _PORT_FIELDS:
        port = getattr(config, key)
        if port is not None and not 0 <= port <= 65535:
            raise _fail(config, key, f"not a port number: {port}")


def _check_file_rules(config: AgentConfig) -> None:
    """Checks that depend only on the conf file."""
    _check_minimums(config)
    if config.update_model_status_interval <= 0:
        raise _fail(config, "update_model_status_interval", "must be > 0 seconds")
    if config.agent_version not in (1, 2, 3):
        raise _fail(config, "agent_version", f"must be 1, 2 or 3, got {config.agent_version}")
    unified = config.deploy_type is DeployType.UNIFIED
    if unified and config.agent_version != 3:
        raise _fail(config, "agent_version", "deploy_type unified needs agent_version 3")
    if not unified and config.agent_version == 3:
        raise _fail(config, "deploy_type", "agent_version 3 needs deploy_type unified")
    if config.deploy_type is DeployType.DENSE and not config.dense_alone:
        raise _fail(config, "deploy_type", "deploy_type dense needs dense_alone true")
    if config.discovery is DiscoveryKind.ZK and not config.zk_servers:
        raise _fail(config, "zk_servers", "is required when discovery is zk")
    if config.discovery is not DiscoveryKind.STATIC:
        required = ("bzid", "layout_pattern") if unified else ("bzid", "base_name")
        for key in required:
            if not getattr(config, key):
                raise _fail(config, key, f"is required when discovery is {config.discovery.value}")
    elif unified:
        raise _fail(config, "discovery", "deploy_type unified needs a registry (zk or consul) for its layout")
    if config.deploy_type in _SERVER_LAUNCHING and not config.base_path:
        raise _fail(config, "base_path", f"is required for deploy_type {config.deploy_type.value}")


# --------------------------------------------------------------------------- environment


def replica_id_from_pod_name(pod_name: str) -> int:
    """The replica id Monolith derives from a pod name (``utils.replica_id_from_pod_name``): hex digits 10..19 of
    the MD5 of the UTF-8 name, read as an integer.

    Registry paths carry it, so our agent and Monolith's must give one pod the same node. Stable across processes
    and Python versions (unlike ``hash()``); in ``0 .. 2**40 - 1``, so it need not fit an int32.
    """
    return int(hashlib.md5(pod_name.encode("utf-8")).hexdigest()[10:20], 16)


def _env_str(env: Mapping[str, str], name: str) -> str | None:
    # An empty variable counts as unset: orchestrators often template absent values as "".
    value = env.get(name, "").strip()
    return value or None


def _env_int(env: Mapping[str, str], name: str, *, minimum: int = 0, maximum: int | None = None) -> int | None:
    raw = _env_str(env, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfError(f"environment variable {name}: not an integer: {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfError(f"environment variable {name}: must be {bound}, got {value}")
    return value


def env_port(env: Mapping[str, str], name: str) -> int | None:
    """The port in ``$name``; None when unset or empty. ConfError (INVALID_ARGUMENT) naming the variable."""
    return _env_int(env, name, minimum=0, maximum=65535)


def _env_ports(env: Mapping[str, str], grpc: str, http: str, archon: str) -> ServerPorts:
    return ServerPorts(grpc=env_port(env, grpc), http=env_port(env, http), archon=env_port(env, archon))


# Where the cluster name comes from, first set wins: Monolith's order. Registry paths (dc_aware) and v3 container
# names carry it, so an agent of ours and a Monolith agent in one pod environment must pick the same one.
_CLUSTER_VARIABLES = ("TCE_LOGICAL_CLUSTER", "TCE_CLUSTER", "TCE_PHYSICAL_CLUSTER")


def resolve_environment(config: AgentConfig, env: Mapping[str, str]) -> AgentConfig:
    """Return ``config`` with the platform's environment applied; ``env`` is the only input read.

    Rules (docs/agent_conf.md has the table):
    - ports: conf value wins, else PORT (archon), PORT2 (agent), PORT3 (main gRPC), PORT4 (HTTP);
      mixed mode also reads PORT5-7 (ps gRPC/HTTP/archon) and, with dense_alone, PORT8-10 (dense).
    - num_shard: conf value, else MONOLITH_HOST_SHARD_N, else 1; conf and env disagreeing is an error.
    - shard_id: SHARD_ID, else 0. replica_id: REPLICA_ID (``-1`` counts as unset, as in Monolith), else
      :func:`replica_id_from_pod_name` of MY_POD_NAME, else ``UNSET_REPLICA_ID`` (-1). Monolith's v1 agent reads
      only MY_POD_NAME; we read REPLICA_ID for every agent_version (a superset).
    - host_ip/host_ipv6/pod_name/psm: MY_HOST_IP, MY_HOST_IPV6, MY_POD_NAME, TCE_PSM.
    - idc: TCE_INTERNAL_IDC; cluster: TCE_LOGICAL_CLUSTER, else TCE_CLUSTER, else TCE_PHYSICAL_CLUSTER (Monolith's
      order); both lower-cased; required when dc_aware.
    Meant to be applied once, to the result of load_agent_config.
    """
    changes: dict[str, Any] = {}
    for key, var in zip(_PORT_FIELDS, ("PORT", "PORT2", "PORT3", "PORT4"), strict=True):
        if getattr(config, key) is None:
            changes[key] = env_port(env, var)
    if config.deploy_type is DeployType.MIXED:
        changes["tfs_ps_ports"] = _env_ports(env, "PORT5", "PORT6", "PORT7")
        if config.dense_alone:
            changes["tfs_dense_ports"] = _env_ports(env, "PORT8", "PORT9", "PORT10")

    env_shards = _env_int(env, "MONOLITH_HOST_SHARD_N", minimum=1)
    if config.num_shard is not None and env_shards is not None and env_shards != config.num_shard:
        raise _fail(config, "num_shard", f"is {config.num_shard} but MONOLITH_HOST_SHARD_N is {env_shards}")
    changes["num_shard"] = config.num_shard or env_shards or 1

    shard_id = _env_int(env, "SHARD_ID")
    if shard_id is not None:
        changes["shard_id"] = shard_id
    replica_id = _env_int(env, "REPLICA_ID", minimum=UNSET_REPLICA_ID)
    pod_name = _env_str(env, "MY_POD_NAME")
    if replica_id in (None, UNSET_REPLICA_ID) and pod_name is not None:
        replica_id = replica_id_from_pod_name(pod_name)
    if replica_id is not None:
        changes["replica_id"] = replica_id

    changes["pod_name"] = pod_name or config.pod_name
    changes["host_ip"] = _env_str(env, "MY_HOST_IP") or config.host_ip
    changes["host_ipv6"] = _env_str(env, "MY_HOST_IPV6") or config.host_ipv6
    changes["psm"] = _env_str(env, "TCE_PSM") or config.psm
    idc = _env_str(env, "TCE_INTERNAL_IDC")
    cluster = next(filter(None, (_env_str(env, name) for name in _CLUSTER_VARIABLES)), None)
    changes["idc"] = idc.lower() if idc else config.idc
    changes["cluster"] = cluster.lower() if cluster else config.cluster

    resolved = dataclasses.replace(config, **changes)
    _check_environment_rules(resolved)
    return resolved


# Environment values that become ZooKeeper names: (field, variables it comes from).
_NAME_FIELDS = {
    "idc": "TCE_INTERNAL_IDC",
    "cluster": "TCE_LOGICAL_CLUSTER/TCE_CLUSTER/TCE_PHYSICAL_CLUSTER",
    "psm": "TCE_PSM",
    "pod_name": "MY_POD_NAME",
}


def _check_names(config: AgentConfig) -> None:
    """idc and cluster name a v1 dc_aware folder ``{idc}:{cluster}``; with psm and the pod name they make a v3
    container's ``{psm};{idc};{cluster}:{pod}``: none may hold ``:`` (Monolith splits on it) or ``/``."""
    used = ("idc", "cluster", "psm", "pod_name") if config.agent_version == 3 else ("idc", "cluster")
    if config.agent_version != 3 and not config.dc_aware:
        return
    for key in used:
        value = getattr(config, key)
        if value is not None and (":" in value or "/" in value):
            raise ConfError(f"environment variable {_NAME_FIELDS[key]}: {value!r} must not contain ':' or '/'")


def _check_environment_rules(config: AgentConfig) -> None:
    _check_minimums(config)
    _check_names(config)
    assert config.num_shard is not None  # set by resolve_environment
    if config.shard_id >= config.num_shard:
        raise ConfError(
            f"environment variable SHARD_ID: {config.shard_id} is not below num_shard {config.num_shard} "
            f"({config.where('num_shard')})"
        )
    if config.dc_aware and not (config.idc and config.cluster):
        raise _fail(
            config,
            "dc_aware",
            "is true but TCE_INTERNAL_IDC and a cluster (TCE_LOGICAL_CLUSTER, TCE_CLUSTER or TCE_PHYSICAL_CLUSTER) "
            "are not both set",
        )
