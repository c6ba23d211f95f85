"""Shared integration fixtures. Keep additive: several areas add fixtures here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from zk_harness import ZooKeeperServer, ZooKeeperUnavailable


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
