"""``monolith-serving model-manager [run|status|rollback|copy]``.

- ``run`` (default): the control loop (``manager.py``) plus the HTTP port (``--metrics_port``: /metrics,
  /status, POST /rollback). POST /rollback needs the token of ``--admin_token_file`` when one is given, and
  is accepted only from loopback otherwise (``http_endpoint.authorize_rollback``).
- ``status [--json]``: asks a running manager (``--manager host:port``) for its status.
- ``rollback --model M --to V [--admin_token_file FILE]``: asks a running manager to roll M back to V (the
  same phases as a rollout) and waits for the outcome; exit 0 when it succeeded. With ``--admin_token_file``
  it sends ``Authorization: Bearer <token>``.
- ``copy``: one-shot receive of the newest complete (or ``--version``) p2p version, then exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monolith_serving.core.admin_token import read_token_file
from monolith_serving.core.cli_flags import add_flag, flag_type, parse_port
from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError, NotFoundError
from monolith_serving.core.grpc_server import run_async_main
from monolith_serving.discovery.config import Backend, DiscoveryConfig
from monolith_serving.discovery.factory import create_discovery
from monolith_serving.discovery.metrics import DiscoveryMetrics
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.entry.replica_source import parse_ps_targets
from monolith_serving.model_manager.fs import LocalFileSystem, open_filesystem
from monolith_serving.model_manager.grpc_control import (
    DiscoveryReplicaList,
    GrpcReplicaControl,
    ReplicaList,
    StaticReplicaList,
)
from monolith_serving.model_manager.http_endpoint import StatusEndpoint
from monolith_serving.model_manager.manager import ManagedModel, ManagerConfig, ModelManager
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.p2p_copy import CopyConfig, VersionCopier, remove_stale_locks
from monolith_serving.model_manager.registry_state import RegistryRecorder
from monolith_serving.model_manager.rollout import ModelState, ModelTarget, RolloutConfig, RolloutCoordinator
from monolith_serving.model_manager.sources import ExportBaseSource, P2pSource, VersionSource
from monolith_serving.model_manager.status import render_text

logger = logging.getLogger(__name__)

ACTIONS = ("run", "status", "rollback", "copy")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=ACTIONS, default="run", help="what to do (default: run)")
    add_flag(parser, "--model", action="append", default=[], help="model to manage (repeatable)")
    add_flag(parser, "--p2p_source", default=None, help="p2p folder ({model}@{version} + .write.done); URL or path")
    add_flag(parser, "--export_base", default=None, help="export base (exported_models/); '{model}' is substituted")
    add_flag(parser, "--receive_dir", type=Path, default=None, help="local folder replicas load from (p2p: required)")
    add_flag(parser, "--num_ps", type=int, default=None, help="PS shards (default: each version's serving spec)")
    add_flag(parser, "--keep_versions", type=int, default=5, help="versions kept in --receive_dir (default 5)")
    add_flag(parser, "--zk_servers", default="", help="ZooKeeper hosts; replicas come from the v1/v3 registry")
    add_flag(parser, "--bzid", default="", help="ZooKeeper business id (root node)")
    add_flag(parser, "--agent_version", type=int, default=1, choices=(1, 3), help="registry layout (default 1)")
    add_flag(parser, "--ps_targets", action="append", default=[], help="static PS replicas, one flag per shard")
    add_flag(parser, "--entry_targets", default="", help="static entry replicas, comma-separated")
    add_flag(parser, "--dense_targets", default="",
             help="static dense_0 replicas (dense_alone models), comma-separated host:port")  # fmt: skip
    add_flag(parser, "--scan_interval_s", type=float, default=2.0, help="control-loop period (default 2)")
    add_flag(parser, "--rollout_timeout_s", type=float, default=600.0, help="abort a rollout after this long")
    add_flag(parser, "--poll_interval_s", type=float, default=0.5, help="status poll period during a rollout")
    add_flag(parser, "--reload_timeout_s", type=float, default=30.0,
             help="bound of one reload RPC; a longer load is followed by status polls (default 30)")  # fmt: skip
    add_flag(parser, "--drain_s", type=float, default=1.0, help="wait between entry switch and PS cleanup")
    add_flag(parser, "--resend_interval_s", type=float, default=10.0, help="re-send a drifted replica's config")
    add_flag(parser, "--retry_after_timeout_s", type=float, default=30.0,
             help="retry a timed-out rollout after this long, doubling per timeout (default 30)")  # fmt: skip
    add_flag(parser, "--retry_after_timeout_max_s", type=float, default=600.0,
             help="cap of the retry delay after timeouts (default 600)")  # fmt: skip
    add_flag(parser, "--copy_rate_limit_bytes_per_s", type=int, default=0, help="copy bandwidth cap (0: none)")
    add_flag(parser, "--host", default="0.0.0.0", help="address of the HTTP port")
    add_flag(
        parser,
        "--metrics_port",
        type=flag_type(parse_port),
        default=0,
        help="HTTP port: /metrics, /status, /rollback (0: off)",
    )
    add_flag(parser, "--admin_token_file", default=None,
             help="run: POST /rollback needs 'Authorization: Bearer <this file's token>' (without it: loopback "
                  "callers only); rollback: send that token")  # fmt: skip
    add_flag(parser, "--manager", default="127.0.0.1:8080", help="status/rollback: the manager's HTTP host:port")
    add_flag(parser, "--json", action="store_true", help="status: print JSON")
    add_flag(parser, "--to", type=int, default=None, help="rollback: the version to go back to")
    add_flag(parser, "--version", type=int, default=None, help="copy: the version (default: newest complete)")
    add_flag(parser, "--timeout_s", type=float, default=1800.0, help="status/rollback: HTTP timeout")


@dataclass(frozen=True)
class RunConfig:
    """Everything ``run`` needs, parsed once from flags."""

    models: tuple[str, ...]
    p2p_source: str | None
    export_base: str | None
    receive_dir: Path | None
    num_ps: int | None
    agent_version: int
    discovery: DiscoveryConfig | None  # None: static targets
    bzid: str
    ps_targets: tuple[tuple[str, ...], ...]
    entry_targets: tuple[str, ...]
    dense_targets: tuple[str, ...]  # the dense_0 servers of dense_alone models
    manager: ManagerConfig
    rollout: RolloutConfig
    copy: CopyConfig | None
    host: str
    metrics_port: int
    admin_token: str | None = field(default=None, repr=False)  # None: POST /rollback from loopback only


def parse_dense_targets(value: str) -> tuple[str, ...]:
    """``--dense_targets``: the replicas of ``dense_0``, comma-separated ``host:port`` (the entry's flag of the
    same name takes the same text). There is one dense sub-model, so no ``;`` separating shards."""
    if not value.strip():
        return ()
    shards = parse_ps_targets([value], "--dense_targets")
    if len(shards) > 1:
        raise InvalidArgumentError("--dense_targets lists the replicas of dense_0 only (comma-separated, no ';')")
    return shards[0]


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    if not args.model:
        raise InvalidArgumentError("give at least one --model")
    if (args.p2p_source is None) == (args.export_base is None):
        raise InvalidArgumentError("give exactly one of --p2p_source and --export_base")
    if args.p2p_source is not None and args.receive_dir is None:
        raise InvalidArgumentError("--p2p_source needs --receive_dir")
    if args.export_base is not None and "{model}" not in args.export_base and len(args.model) > 1:
        raise InvalidArgumentError("several --model with one --export_base: put '{model}' in the path")
    ps_targets = parse_ps_targets(args.ps_targets)
    entry_targets = tuple(a.strip() for a in args.entry_targets.split(",") if a.strip())
    dense_targets = parse_dense_targets(args.dense_targets)
    discovery = None
    if args.zk_servers:
        if not args.bzid:
            raise InvalidArgumentError("--zk_servers needs --bzid")
        given = {"--ps_targets": ps_targets, "--entry_targets": entry_targets, "--dense_targets": dense_targets}
        static = [flag for flag, targets in given.items() if targets]
        if static:
            # Replicas come from the registry then; static ones would be ignored without a word.
            raise InvalidArgumentError(
                f"{', '.join(static)} name static replicas, but with --zk_servers the replicas come from the "
                "registry: give one or the other"
            )
        discovery = DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=args.zk_servers)
    elif not ps_targets:
        raise InvalidArgumentError("give --zk_servers (with --bzid) or static --ps_targets/--entry_targets")
    copy = CopyConfig(args.receive_dir, args.copy_rate_limit_bytes_per_s) if args.receive_dir is not None else None
    return RunConfig(
        models=tuple(args.model),
        p2p_source=args.p2p_source,
        export_base=args.export_base,
        receive_dir=args.receive_dir,
        num_ps=args.num_ps,
        agent_version=args.agent_version,
        discovery=discovery,
        bzid=args.bzid,
        ps_targets=ps_targets,
        entry_targets=entry_targets,
        dense_targets=dense_targets,
        manager=ManagerConfig(
            scan_interval_s=args.scan_interval_s,
            keep_versions=args.keep_versions,
            retry_after_timeout_s=args.retry_after_timeout_s,
            retry_after_timeout_max_s=args.retry_after_timeout_max_s,
        ),
        rollout=RolloutConfig(
            timeout_s=args.rollout_timeout_s,
            poll_interval_s=args.poll_interval_s,
            reload_timeout_s=args.reload_timeout_s,
            drain_s=args.drain_s,
            resend_interval_s=args.resend_interval_s,
        ),
        copy=copy,
        host=args.host,
        metrics_port=args.metrics_port,
        admin_token=read_token_file(args.admin_token_file) if args.admin_token_file else None,
    )


def build_models(config: RunConfig) -> list[ManagedModel]:
    models = []
    for name in config.models:
        source: VersionSource
        if config.p2p_source is not None:
            fs, path = open_filesystem(config.p2p_source)
            source = P2pSource(fs, path, name, num_ps=config.num_ps)
            assert config.receive_dir is not None
            base_dir = str(config.receive_dir / name)
        else:
            assert config.export_base is not None
            fs, path = open_filesystem(config.export_base.replace("{model}", name))
            copied = config.receive_dir is not None or not isinstance(fs, LocalFileSystem)
            if copied and config.receive_dir is None:
                raise InvalidArgumentError("a remote --export_base needs --receive_dir (replicas load local files)")
            source = ExportBaseSource(fs, path, name, num_ps=config.num_ps, needs_copy=copied)
            base_dir = str(config.receive_dir / name) if config.receive_dir is not None and copied else path
        # Absolute, so reload configs and v3 declarations name the folder the same way wherever read.
        base_dir = str(Path(base_dir).resolve())
        prefix = f"{name}:" if config.agent_version == 3 else ""
        target = ModelTarget(name, base_dir, config.num_ps or 0, served_prefix=prefix)
        models.append(ManagedModel(source=source, state=ModelState(target), num_ps_fixed=config.num_ps is not None))
    return models


async def serve(config: RunConfig, stop: asyncio.Event) -> int:
    metrics = ModelManagerMetrics()
    async with AsyncExitStack() as stack:
        replica_list: ReplicaList
        recorder = None
        if config.discovery is not None:
            discovery = create_discovery(config.discovery)
            await discovery.start()
            stack.push_async_callback(discovery.stop)
            watcher = ReplicaWatcher(
                discovery=discovery,
                bzid=config.bzid,
                agent_version=config.agent_version,
                metrics=DiscoveryMetrics(metrics.registry),  # its staleness beside the manager's own series
            )
            await watcher.start()
            stack.push_async_callback(watcher.stop)
            if not await watcher.wait_synced(30.0):
                logger.warning("registry not read within 30 s; starting with an empty replica view")
            replica_list = DiscoveryReplicaList(watcher, agent_version=config.agent_version)
            recorder = RegistryRecorder(discovery, config.bzid, declare_saved_models=config.agent_version == 3)
        else:
            replica_list = StaticReplicaList(config.ps_targets, config.entry_targets, config.dense_targets)
        control = GrpcReplicaControl(replica_list)
        stack.push_async_callback(control.close)
        models = build_models(config)
        copier = VersionCopier(config.copy) if config.copy is not None else None
        for model in models:
            if isinstance(model.source, P2pSource):
                for path in remove_stale_locks(model.source.fs, model.source.source_dir):
                    logger.warning("removed stale read lock %s", path)
        coordinator = RolloutCoordinator(control=control, config=config.rollout, metrics=metrics)
        manager = ModelManager(
            models=models,
            coordinator=coordinator,
            copier=copier,
            config=config.manager,
            metrics=metrics,
            recorder=recorder,
        )
        if config.metrics_port:
            endpoint = StatusEndpoint(
                manager,
                metrics,
                host=config.host,
                port=config.metrics_port,
                rollback_timeout_s=3 * config.rollout.timeout_s,
                admin_token=config.admin_token,
            )
            endpoint.start()
            stack.callback(endpoint.stop)
        logger.info("model-manager managing %s", ", ".join(config.models))
        await manager.run(stop)
    return 0


def _http(args: argparse.Namespace, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    url = f"http://{args.manager}{path}"
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout_s) as response:
            return int(response.status), _json_body(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), _json_body(error.read())
    except (urllib.error.URLError, OSError) as error:
        raise MonolithServingError(f"cannot reach the model manager at {url}: {error}") from error


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return {"error": body.decode(errors="replace")}


def _status(args: argparse.Namespace) -> int:
    _code, snapshot = _http(args, "GET", "/status")
    print(json.dumps(snapshot, indent=2, sort_keys=True) if args.json else render_text(snapshot))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    if args.to is None or len(args.model) != 1:
        raise InvalidArgumentError("rollback needs --model NAME and --to VERSION")
    headers = {}
    if args.admin_token_file:
        headers["Authorization"] = f"Bearer {read_token_file(args.admin_token_file)}"
    query = urllib.parse.urlencode({"model": args.model[0], "version": args.to})
    code, body = _http(args, "POST", f"/rollback?{query}", headers)
    print(json.dumps(body, indent=2, sort_keys=True))
    return 0 if code == 200 else 1


def _copy(args: argparse.Namespace) -> int:
    if args.p2p_source is None or args.receive_dir is None or len(args.model) != 1:
        raise InvalidArgumentError("copy needs --p2p_source, --receive_dir and one --model")
    fs, path = open_filesystem(args.p2p_source)
    copier = VersionCopier(CopyConfig(args.receive_dir, args.copy_rate_limit_bytes_per_s))
    copier.recover(args.model[0])
    candidates = {c.version: c for c in P2pSource(fs, path, args.model[0], num_ps=args.num_ps).scan()}
    version = args.version if args.version is not None else max(candidates, default=None)
    if version is None or version not in candidates:
        raise NotFoundError(f"no complete version {version if version is not None else ''} in {args.p2p_source}")
    copied = copier.copy(fs, candidates[version])
    print(f"{args.model[0]} version {version}: " + ("already received" if copied is None else f"{copied} bytes"))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "status":
            return _status(args)
        if args.action == "rollback":
            return _rollback(args)
        if args.action == "copy":
            return _copy(args)
        config = run_config_from_args(args)
    except MonolithServingError as error:
        print(f"model-manager: {error.message}", file=sys.stderr)
        return 2
    return run_async_main(lambda stop: serve(config, stop))
