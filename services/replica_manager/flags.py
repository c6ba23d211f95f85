"""Registry flags shared by ``replica-manager`` and ``replicas``: flags override ``--conf agent.conf``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from monolith_serving.core.agent_conf import AgentConfig, load_agent_config
from monolith_serving.core.cli_flags import add_flag
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.discovery.config import Backend, DiscoveryConfig


def add_registry_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--conf", default=None, help="agent.conf to read bzid / discovery / zk_servers from")
    parser.add_argument(
        "--zk_servers", "--zk-servers", "--zk", dest="zk_servers", default=None, help="ZooKeeper host:port[,...]"
    )
    add_flag(parser, "--consul_address", default=None, help="Consul agent host:port (with --discovery consul)")
    add_flag(parser, "--discovery", choices=("zk", "consul"), default=None, help="registry kind (default: zk)")
    add_flag(parser, "--bzid", default=None, help="business id: the registry root /{bzid}")
    add_flag(parser, "--session_timeout_s", type=float, default=10.0, help="registry session timeout / TTL")


@dataclass(frozen=True)
class RegistrySettings:
    bzid: str
    discovery: DiscoveryConfig
    conf: AgentConfig | None


def registry_settings(args: argparse.Namespace) -> RegistrySettings:
    """Resolve flags over the optional agent.conf; InvalidArgumentError on a missing or bad setting."""
    conf = load_agent_config(args.conf) if args.conf else None
    bzid = args.bzid or (conf.bzid if conf is not None else None)
    if not bzid:
        raise InvalidArgumentError("--bzid (or bzid in --conf) is required")
    kind = args.discovery or (conf.discovery.value if conf is not None and conf.discovery.value != "static" else None)
    if kind is None:
        kind = "consul" if args.consul_address and not args.zk_servers else "zk"
    timeout_s = args.session_timeout_s
    try:
        if kind == "consul":
            address = args.consul_address or (conf.consul_address if conf is not None else "127.0.0.1:8500")
            discovery = DiscoveryConfig.consul_from_address(address, session_timeout_s=timeout_s)
        else:
            servers = args.zk_servers or (conf.zk_servers if conf is not None else None)
            if not servers:
                raise InvalidArgumentError("--zk_servers (or zk_servers in --conf) is required")
            discovery = DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=servers, session_timeout_s=timeout_s)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from exc
    return RegistrySettings(bzid=bzid, discovery=discovery, conf=conf)
