"""ZooKeeper path builders and parsers (REFERENCE section 7)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monolith_serving.core import zk_paths
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.zk_paths import ReplicaPath, ServerType

# Names ZooKeeper accepts that contain neither '/' nor ':' (and are not '.' or '..').
NAME = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/:\x00"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
# Container ids may hold ':' (IPv6 addresses).
CTX_ID = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\x00"),
    min_size=1,
    max_size=16,
).filter(lambda s: s not in (".", ".."))


# --------------------------------------------------------------------------- v1


def test_ps_path() -> None:
    path = ReplicaPath("bz", "model", ServerType.PS, 3, 12)
    assert path.path == "/bz/service/model/ps:3/12"
    assert path.task_path == "/bz/service/model/ps:3"
    assert not path.dc_aware


def test_entry_replica_id_is_zero_padded_to_11_digits() -> None:
    path = ReplicaPath("bz", "model", ServerType.ENTRY, 0, 42)
    assert path.path == "/bz/service/model/entry:0/00000000042"
    assert len(path.replica_name) == 11
    assert ReplicaPath.parse(path.path) == path


def test_dense_replica_id_is_plain_decimal() -> None:
    assert ReplicaPath("bz", "m", ServerType.DENSE, 1, 7).path == "/bz/service/m/dense:1/7"


def test_dc_aware_path() -> None:
    path = ReplicaPath("bz", "model", ServerType.ENTRY, 0, 5, idc="lf", cluster="default")
    assert path.path == "/bz/service/model/lf:default/entry:0/00000000005"
    assert path.dc_aware
    assert ReplicaPath.parse(path.path) == path


def test_plain_string_server_type_is_normalised() -> None:
    path = ReplicaPath("bz", "m", "entry", 0, 1)  # type: ignore[arg-type]
    assert path.server_type is ServerType.ENTRY
    assert path.path.endswith("/00000000001")


def test_replica_id_minus_one_is_monolith_no_id_and_never_padded() -> None:
    """A PS or dense without a replica id registers the leaf ``-1`` (Monolith's and ours); ReplicaPath is that leaf
    too, for writers and readers. An entry without id never writes it (it claims a sequential node instead), but a
    reader accepts it, unpadded."""
    ps = ReplicaPath("bz", "m", ServerType.PS, 2, zk_paths.UNSET_REPLICA_ID)
    assert (ps.path, ps.has_id) == ("/bz/service/m/ps:2/-1", False)
    assert ReplicaPath.parse(ps.path) == ps
    assert (
        ReplicaPath("bz", "m", ServerType.DENSE, 0, -1, idc="lf", cluster="c").path == "/bz/service/m/lf:c/dense:0/-1"
    )
    assert ReplicaPath("bz", "m", ServerType.ENTRY, 0, -1).replica_name == "-1"
    assert ReplicaPath("bz", "m", ServerType.ENTRY, 0, 0).has_id


def test_parse_accepts_unpadded_entry_ids() -> None:
    parsed = ReplicaPath.parse("/bz/service/m/entry:0/42")
    assert parsed.replica_id == 42
    assert parsed.path == "/bz/service/m/entry:0/00000000042"


@given(
    NAME,
    NAME,
    st.sampled_from(ServerType),
    st.integers(min_value=0, max_value=10_000),
    st.one_of(st.just(zk_paths.UNSET_REPLICA_ID), st.integers(min_value=0, max_value=2**40)),
    st.one_of(st.none(), st.tuples(NAME, NAME)),
)
def test_replica_path_round_trips(
    bzid: str,
    base_name: str,
    server_type: ServerType,
    task: int,
    replica_id: int,
    location: tuple[str, str] | None,
) -> None:
    idc, cluster = location if location else (None, None)
    path = ReplicaPath(bzid, base_name, server_type, task, replica_id, idc=idc, cluster=cluster)
    assert path.path.startswith(zk_paths.service_root(bzid, base_name, idc, cluster) + "/")
    assert ReplicaPath.parse(path.path) == path
    assert ReplicaPath.parse(path.path).path == path.path


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/",
        "bz/service/m/ps:0/1",
        "/bz/service/m/ps:0",
        "/bz/services/m/ps:0/1",
        "/bz/service/m/proxy:0/1",
        "/bz/service/m/ps/1",
        "/bz/service/m/ps:x/1",
        "/bz/service/m/ps:-1/1",
        "/bz/service/m/ps:0/-2",
        "/bz/service/m/ps:0/-01",
        "/bz/service/m/ps:0/1a",
        "/bz/service/m/ps:0/",
        "/bz/service/m/lf/ps:0/1",
        "/bz/service/m/lf:/ps:0/1",
        "/bz/service/m/a:b/c:d/ps:0/1",
        "/bz/service//ps:0/1",
        "/bz/service/m/ps:0/1/extra",
    ],
)
def test_parse_rejects_bad_paths_naming_them(bad: str) -> None:
    with pytest.raises(InvalidArgumentError) as exc:
        ReplicaPath.parse(bad)
    assert repr(bad) in str(exc.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bzid": "a/b"},
        {"bzid": ""},
        {"base_name": "m:1"},
        {"base_name": ".."},
        {"task": -1},
        {"replica_id": -2},
        {"idc": "lf"},
        {"idc": "lf", "cluster": "c/1"},
        {"server_type": "proxy"},
    ],
)
def test_construction_validates(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "bzid": "bz",
        "base_name": "m",
        "server_type": ServerType.PS,
        "task": 0,
        "replica_id": 0,
        **kwargs,
    }
    with pytest.raises(InvalidArgumentError):
        ReplicaPath(**fields)  # type: ignore[arg-type]


def test_task_key_round_trip() -> None:
    assert zk_paths.task_key(ServerType.PS, 4) == "ps:4"
    assert zk_paths.parse_task_key("dense:2") == (ServerType.DENSE, 2)
    for bad in ("ps", "ps:", "ps:a", "proxy:1", ":1"):
        with pytest.raises(InvalidArgumentError):
            zk_paths.parse_task_key(bad)


def test_service_root() -> None:
    assert zk_paths.service_root("bz", "m") == "/bz/service/m"
    assert zk_paths.service_root("bz", "m", "lf", "c") == "/bz/service/m/lf:c"
    with pytest.raises(InvalidArgumentError):
        zk_paths.service_root("bz", "m", cluster="c")


# --------------------------------------------------------------------------- v3


def test_v3_paths() -> None:
    assert zk_paths.saved_model_path("bz", "ctr", "ps_0") == "/bz/saved_models/ctr/ps_0"
    assert zk_paths.layout_root("bz") == "/bz/layouts"
    assert zk_paths.layout_path("bz", "main") == "/bz/layouts/main"
    assert zk_paths.layout_item_path("bz", "main", "ctr", "entry") == "/bz/layouts/main/ctr:entry"
    assert zk_paths.binding_path("bz", "ctr", "ps_1", "psm;lf;c", "pod-7") == "/bz/binding/ctr/ps_1:psm;lf;c:pod-7"
    assert zk_paths.container_service_path("bz", "psm;lf;c", "pod-7") == "/bz/container_service/psm;lf;c:pod-7"


def test_v3_roots_are_parents() -> None:
    assert zk_paths.saved_model_path("b", "m", "s").startswith(zk_paths.saved_model_dir("b", "m") + "/")
    assert zk_paths.saved_model_dir("b", "m").startswith(zk_paths.saved_models_root("b") + "/")
    assert zk_paths.binding_path("b", "m", "s", "c", "i").startswith(zk_paths.binding_model_path("b", "m") + "/")
    assert zk_paths.binding_model_path("b", "m").startswith(zk_paths.binding_root("b") + "/")
    assert zk_paths.container_service_path("b", "c", "i").startswith(zk_paths.container_service_root("b") + "/")


@given(NAME, NAME, NAME, CTX_ID)
def test_v3_leaf_names_round_trip(model: str, sub_graph: str, ctx_cluster: str, ctx_id: str) -> None:
    item = zk_paths.layout_item_path("bz", "l", model, sub_graph).rsplit("/", 1)[1]
    assert zk_paths.parse_layout_item_name(item) == (model, sub_graph)
    binding = zk_paths.binding_path("bz", model, sub_graph, ctx_cluster, ctx_id).rsplit("/", 1)[1]
    assert zk_paths.parse_binding_name(binding) == (sub_graph, ctx_cluster, ctx_id)
    container = zk_paths.container_service_path("bz", ctx_cluster, ctx_id).rsplit("/", 1)[1]
    assert zk_paths.parse_container_service_name(container) == (ctx_cluster, ctx_id)
    leaf = zk_paths.saved_model_path("bz", model, sub_graph).rsplit("/", 1)[1]
    assert zk_paths.parse_saved_model_name(leaf) == sub_graph


def test_ipv6_container_id() -> None:
    leaf = zk_paths.container_service_name("psm;lf;c", "fd00::1")
    assert leaf == "psm;lf;c:fd00::1"
    assert zk_paths.parse_container_service_name(leaf).ctx_id == "fd00::1"
    assert zk_paths.parse_binding_name("ps_0:cl:fd00::1").ctx_id == "fd00::1"


@pytest.mark.parametrize(
    ("parser", "bad"),
    [
        (zk_paths.parse_layout_item_name, "ctr"),
        (zk_paths.parse_layout_item_name, "ctr:ps:0"),
        (zk_paths.parse_layout_item_name, ":ps_0"),
        (zk_paths.parse_binding_name, "ps_0:cluster"),
        (zk_paths.parse_binding_name, "ps_0::id"),
        (zk_paths.parse_container_service_name, "cluster"),
        (zk_paths.parse_container_service_name, "cluster:"),
        (zk_paths.parse_saved_model_name, "a/b"),
    ],
)
def test_leaf_parsers_reject(parser: object, bad: str) -> None:
    assert callable(parser)
    with pytest.raises(InvalidArgumentError):
        parser(bad)


@pytest.mark.parametrize(
    "call",
    [
        lambda: zk_paths.layout_item_path("bz", "l", "m:x", "s"),
        lambda: zk_paths.binding_path("bz", "m", "s", "c:1", "id"),
        lambda: zk_paths.container_service_path("bz", "c", "a/b"),
        lambda: zk_paths.saved_model_path("bz", "m", ""),
        lambda: zk_paths.layout_path("b/z", "l"),
    ],
)
def test_builders_reject_names_that_would_not_parse_back(call: object) -> None:
    assert callable(call)
    with pytest.raises(InvalidArgumentError):
        call()
