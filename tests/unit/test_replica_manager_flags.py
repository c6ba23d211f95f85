"""The replica manager's registry flags resolve as the proxy's: a Consul session TTL below Consul's minimum (10 s)
is a usage error naming it, not silently raised."""

from __future__ import annotations

import argparse

import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.discovery import Backend
from monolith_serving.replica_manager import flags


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    flags.add_registry_flags(parser)
    return parser.parse_args(list(argv))


def test_a_consul_session_ttl_under_ten_seconds_is_refused() -> None:
    args = parse(
        "--bzid", "b", "--discovery", "consul", "--consul_address", "127.0.0.1:8500", "--session_timeout_s", "5"
    )
    with pytest.raises(InvalidArgumentError, match="at least 10"):
        flags.registry_settings(args)


def test_a_short_zookeeper_session_is_kept() -> None:
    args = parse("--bzid", "b", "--discovery", "zk", "--zk_servers", "127.0.0.1:2181", "--session_timeout_s", "5")
    settings = flags.registry_settings(args)
    assert settings.discovery.backend is Backend.ZOOKEEPER and settings.discovery.session_timeout_s == 5.0
