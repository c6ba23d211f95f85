"""Reader-side compatibility with what Monolith writes and what its clients expect, without the network.

- The address to dial: Monolith's readers (``ReplicaMeta.get_address``) treat ``0.0.0.0:port`` / ``[::]:port``
  as not set and prefer IPv6 only on an IPv6-only host (``zk_utils.is_ipv6_only``).
- A Monolith PS without a replica id registers ``ps:{task}/-1``; its readers see that replica (``ReplicaPath``
  parses the leaf ``-1``).
- v1 HeartBeat lists a task whose replicas are all not routable with an empty address list.
- v1 GetReplicas ignores ``model_name``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.zk_paths import UNSET_REPLICA_ID, ReplicaPath, ServerType
from monolith_serving.discovery import ModelState, ReplicaMeta
from monolith_serving.discovery.addresses import AddressFamily, choose_address, host_address_family
from monolith_serving.discovery.agent_view import WatcherReplicaView
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.discovery.static import StaticDiscovery

V4, V6 = AddressFamily.IPV4, AddressFamily.IPV6

# ------------------------------------------------------------------------------------------ address choice


@pytest.mark.parametrize(
    ("ipv4", "ipv6", "prefer", "chosen"),
    [
        ("10.0.0.1:9", "[fd00::1]:9", V4, "10.0.0.1:9"),
        ("10.0.0.1:9", "[fd00::1]:9", V6, "[fd00::1]:9"),
        ("0.0.0.0:9", "[fd00::1]:9", V4, "[fd00::1]:9"),  # Monolith's writer when gethostbyname failed
        ("10.0.0.1:9", "[::]:9", V6, "10.0.0.1:9"),  # ... and when it found no IPv6 address
        ("0.0.0.0:9", "[::]:9", V4, None),
        ("0.0.0.0:9", None, V6, None),
        (None, "[fd00::1]:9", V4, "[fd00::1]:9"),
        ("", "[fd00::1]:9", V4, "[fd00::1]:9"),
        ("10.0.0.1:9", None, V6, "10.0.0.1:9"),
        ("10.0.0.1:9", "", V6, "10.0.0.1:9"),
        (None, None, V4, None),
    ],
)
def test_choose_address_follows_monolith(
    ipv4: str | None, ipv6: str | None, prefer: AddressFamily, chosen: str | None
) -> None:
    assert choose_address(ipv4, ipv6, prefer) == chosen
    assert ReplicaMeta(address=ipv4, address_ipv6=ipv6).serving_address(prefer) == chosen


def _unresolvable() -> str | None:
    return None


def _resolves() -> str | None:
    return "10.0.0.1"


def _must_not_resolve() -> str | None:
    raise AssertionError("the environment decides; no lookup")


@pytest.mark.parametrize(
    ("env", "resolve", "family"),
    [
        ({}, _resolves, V4),
        ({}, _unresolvable, V6),
        ({"MY_HOST_IP": "10.0.0.2"}, _must_not_resolve, V4),
        ({"MY_POD_IP": "10.0.0.3"}, _must_not_resolve, V4),
        ({"MY_HOST_IPV6": "fd00::1"}, _must_not_resolve, V6),  # set, but no IPv4 variable: IPv6-only
        ({"MY_HOST_IPV6": "fd00::1", "MY_POD_IP": "10.0.0.3"}, _must_not_resolve, V4),
        ({"MY_HOST_IP": "", "MY_POD_IP": "10.0.0.3"}, _must_not_resolve, V6),  # MY_HOST_IP wins even when empty
    ],
)
def test_host_address_family_as_monolith_decides(
    env: dict[str, str], resolve: Callable[[], str | None], family: AddressFamily
) -> None:
    assert host_address_family(env, resolve) is family


# ------------------------------------------------------------------------------------------ replica id -1


def test_replica_path_reads_monolith_unset_replica_id() -> None:
    ps = ReplicaPath.parse("/bz/service/m/ps:3/-1")
    assert (ps.server_type, ps.task, ps.replica_id, ps.replica_name) == (ServerType.PS, 3, UNSET_REPLICA_ID, "-1")
    assert not ps.has_id and ps.path == "/bz/service/m/ps:3/-1"
    dc = ReplicaPath.parse("/bz/service/m/lf:c1/dense:0/-1")
    assert (dc.idc, dc.cluster, dc.server_type, dc.replica_id, dc.path) == (
        "lf",
        "c1",
        ServerType.DENSE,
        -1,
        "/bz/service/m/lf:c1/dense:0/-1",
    )
    # Never zero-padded, not even for an entry (Monolith's entry never writes it; a reader still accepts it).
    assert ReplicaPath.parse("/bz/service/m/entry:0/-1").path == "/bz/service/m/entry:0/-1"
    assert ReplicaPath.parse("/bz/service/m/entry:0/00000000007").replica_id == 7


@pytest.mark.parametrize(
    "path",
    ["/bz/service/m/ps:0/-2", "/bz/service/m/ps:0/-01", "/bz/service/m/ps:0/+1", "/bz/service/m/nope:0/-1", "/-1"],
)
def test_replica_path_refuses_other_signed_leaves(path: str) -> None:
    with pytest.raises(InvalidArgumentError):
        ReplicaPath.parse(path)


def test_unset_id_path_validates_every_other_field() -> None:
    with pytest.raises(InvalidArgumentError):
        ReplicaPath("bz", "m", ServerType.PS, -3, -1)
    with pytest.raises(InvalidArgumentError):
        ReplicaPath("bz", "m", ServerType.PS, 0, -2)
    assert ReplicaPath("bz", "m", "ps", 0, -1).server_type is ServerType.PS  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ watcher views


def _meta(address: str | None, stat: int = ModelState.AVAILABLE, address_ipv6: str | None = None) -> bytes:
    return ReplicaMeta(address=address, address_ipv6=address_ipv6, stat=stat).to_json()


NODES = {
    "/bz/service/m/ps:0/1": _meta("10.0.0.1:9", address_ipv6="[fd00::1]:9"),
    "/bz/service/m/ps:0/2": _meta("0.0.0.0:9", address_ipv6="[fd00::2]:9"),
    "/bz/service/m/ps:1/-1": _meta("10.0.0.3:9"),
    "/bz/service/m/ps:2/1": _meta("10.0.0.4:9", stat=ModelState.LOADING),
    "/bz/service/m/ps:3/1": _meta("0.0.0.0:9", address_ipv6="[::]:9"),  # AVAILABLE, but nothing to dial
    "/bz/service/m/entry:0/00000000001": _meta("10.0.0.5:9"),
    "/bz/service/other/ps:0/1": _meta("10.0.0.9:9"),
}


async def _watcher(family: AddressFamily = V4, base_name: str | None = "m") -> ReplicaWatcher:
    discovery = StaticDiscovery(nodes=NODES)
    await discovery.start()
    watcher = ReplicaWatcher(discovery=discovery, bzid="bz", base_name=base_name, address_family=family)
    await watcher.resync()
    return watcher


def test_watcher_never_hands_out_unset_addresses_and_sees_replica_minus_one() -> None:
    async def check() -> None:
        watcher = await _watcher()
        assert watcher.get_replicas(ServerType.PS, 0) == ["10.0.0.1:9", "[fd00::2]:9"]
        assert watcher.get_replicas(ServerType.PS, 1) == ["10.0.0.3:9"]
        assert watcher.get_replicas(ServerType.PS, 3) == []
        assert await watcher.wait_until_available(ServerType.PS, [0, 1], timeout_s=0.1)
        assert watcher.get_all_replicas(ServerType.PS) == {
            "ps:0": ["10.0.0.1:9", "[fd00::2]:9"],
            "ps:1": ["10.0.0.3:9"],
            "ps:2": [],  # LOADING only: listed, empty
            "ps:3": [],  # AVAILABLE without an address to dial: listed, empty
        }
        by_path = {info.path.path: info for info in watcher.replicas()}
        assert by_path["/bz/service/m/ps:0/2"].address == "[fd00::2]:9"
        assert by_path["/bz/service/m/ps:0/2"].meta.address == "0.0.0.0:9"  # the registered data is kept
        assert by_path["/bz/service/m/ps:1/-1"].path.replica_id == -1

        ipv6_host = await _watcher(V6)
        assert ipv6_host.get_replicas(ServerType.PS, 0) == ["[fd00::1]:9", "[fd00::2]:9"]
        assert ipv6_host.get_replicas(ServerType.PS, 1) == ["10.0.0.3:9"]  # no IPv6 registered: IPv4

    asyncio.run(check())


def test_v1_agent_view_heartbeat_keeps_empty_tasks_and_get_replicas_ignores_model_name() -> None:
    async def check() -> None:
        view = WatcherReplicaView(await _watcher(), agent_version=1, base_name="m")
        assert view.heartbeat(ServerType.PS, "") == {
            "ps:0": ["10.0.0.1:9", "[fd00::2]:9"],
            "ps:1": ["10.0.0.3:9"],
            "ps:2": [],
            "ps:3": [],
        }
        assert view.heartbeat(ServerType.DENSE, "") == {}  # no dense node at all: no key
        for model_name in ("", "m", "ps_0", "another_model"):
            assert view.get_replicas(ServerType.PS, 0, model_name) == ["10.0.0.1:9", "[fd00::2]:9"], model_name
        # A view over a watcher of every model (no base_name) still selects by model_name.
        everything = WatcherReplicaView(await _watcher(base_name=None), agent_version=1)
        assert everything.get_replicas(ServerType.PS, 0, "other") == ["10.0.0.9:9"]

    asyncio.run(check())
