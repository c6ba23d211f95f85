"""Shared integration fixtures. Keep additive: several areas add fixtures here."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from zk_harness import ZooKeeperServer, ZooKeeperUnavailable

# In-repo doubles of external services (tests/consul_double, ...) import as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consul_double import ConsulDouble, ConsulTarget, OffsetClock


@pytest.fixture(scope="session")
def zk_server() -> Iterator[ZooKeeperServer]:
    """One real ZooKeeper for the whole session (tests use distinct bzid roots to stay independent).

    Fails (does not skip) when Java or Debian's zookeeper package is missing: `make test` installs them.
    """
    try:
        server = ZooKeeperServer()
        server.start()
    except ZooKeeperUnavailable as exc:
        pytest.fail(f"real ZooKeeper needed for integration tests: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture()
def zk_private_server() -> Iterator[ZooKeeperServer]:
    """A ZooKeeper of this test alone, for tests that stop/restart the server."""
    try:
        server = ZooKeeperServer()
        server.start()
    except ZooKeeperUnavailable as exc:
        pytest.fail(f"real ZooKeeper needed for integration tests: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["double", "real"])
def consul_target(request: pytest.FixtureRequest) -> Iterator[ConsulTarget]:
    """Each Consul test runs twice: on the in-repo double, and on the real agent at CONSUL_HTTP_ADDR."""
    if request.param == "real":
        address = os.environ.get("CONSUL_HTTP_ADDR")
        if not address:
            pytest.skip("CONSUL_HTTP_ADDR not set: no real Consul agent to run against")
        yield ConsulTarget(address=address, double=None)
        return
    clock = OffsetClock()
    with ConsulDouble(clock=clock) as double:
        yield ConsulTarget(address=double.address, double=double, clock=clock)
