"""The ZooKeeper harness itself: a real server that answers, keeps data across restart, and stops."""

from __future__ import annotations

import pytest
from kazoo.client import KazooClient
from zk_harness import ZooKeeperServer, four_letter_word

pytestmark = pytest.mark.integration


def test_server_answers_and_keeps_data_across_restart(zk_private_server: ZooKeeperServer) -> None:
    assert four_letter_word(zk_private_server.port, "ruok") == "imok"
    client = KazooClient(hosts=zk_private_server.hosts, timeout=10)
    client.start(timeout=15)
    try:
        client.create("/harness/persist", b"kept", makepath=True)
    finally:
        client.stop()
        client.close()

    port = zk_private_server.port
    zk_private_server.restart()
    assert zk_private_server.port == port

    client = KazooClient(hosts=zk_private_server.hosts, timeout=10)
    client.start(timeout=15)
    try:
        data, _ = client.get("/harness/persist")
        assert data == b"kept"
    finally:
        client.stop()
        client.close()

    zk_private_server.stop()
    assert not zk_private_server.running
    with pytest.raises(OSError):
        four_letter_word(port, "ruok")
