"""Shared integration fixtures. Keep additive: several areas add fixtures here."""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from zk_harness import ZooKeeperServer, ZooKeeperUnavailable

# In-repo doubles of external services (tests/consul_double, ...) import as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consul_double import ConsulDouble, ConsulTarget, OffsetClock
from procs import STOP_PROBLEMS


@pytest.fixture(autouse=True)
def servers_stop_cleanly() -> Iterator[None]:
    """Every ``ServerProcess`` the test stopped exited with 0 within its timeout of SIGTERM."""
    STOP_PROBLEMS.clear()
    yield
    problems, STOP_PROBLEMS[:] = list(STOP_PROBLEMS), []
    assert not problems, "\n\n".join(problems)


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
def zk(zk_server: ZooKeeperServer) -> Iterator[KazooClient]:
    """A kazoo session on the session's ZooKeeper, for this test alone (its ephemeral nodes go with it)."""
    client = KazooClient(hosts=zk_server.hosts)
    client.start(timeout=30)
    try:
        yield client
    finally:
        client.stop()
        client.close()


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


_LOG_TAIL_CHARS = 4000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failed test's report carries the tails of the process logs it left in its tmp_path.

    The integration tests run real servers and agents that log to files there; a timeout alone says
    nothing about why (a child that never bound its port, a reload that kept failing), and CI keeps
    nothing but this report.
    """
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if not isinstance(tmp_path, Path):
        return
    for log_path in sorted(tmp_path.rglob("*.log")):
        text = log_path.read_text(errors="replace")
        tail = text[-_LOG_TAIL_CHARS:]
        cut = "" if len(tail) == len(text) else f"(last {_LOG_TAIL_CHARS} of {len(text)} chars)\n"
        report.sections.append((f"log {log_path.relative_to(tmp_path)}", cut + tail))
