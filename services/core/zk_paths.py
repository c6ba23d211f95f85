"""ZooKeeper path layout of Monolith serving (REFERENCE section 7): builders and parsers.

v1 service registry (one ephemeral node per serving replica)::

    /{bzid}/service/{base_name}/{server_type}:{task}/{replica_id}
    /{bzid}/service/{base_name}/{idc}:{cluster}/{server_type}:{task}/{replica_id}   (dc_aware)

Entry replica ids are written zero-padded to 11 digits, ps/dense ones as plain decimal. The replica id
``-1`` (:data:`UNSET_REPLICA_ID`) is Monolith's "no id": its PS and dense write the leaf ``-1``; its entry
never does (it takes a sequential node and adopts that number instead).

v3 (unified containers)::

    /{bzid}/saved_models/{model}/{sub_graph}
    /{bzid}/layouts/{layout}/{model}:{sub_graph}
    /{bzid}/binding/{model}/{sub_graph}:{ctx_cluster}:{ctx_id}
    /{bzid}/container_service/{ctx_cluster}:{ctx_id}

Names are validated when a path is built, so a path built here always parses back to the same
values. ``ctx_id`` is the last field of its leaf and may contain ``:`` (an IPv6 address is a valid
container id); every other name must not contain ``/`` or ``:``. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from monolith_serving.core.errors import InvalidArgumentError

__all__ = [
    "UNSET_REPLICA_ID",
    "BindingLeaf",
    "ContainerLeaf",
    "LayoutItemLeaf",
    "ReplicaPath",
    "ServerType",
    "TaskKey",
    "binding_model_path",
    "binding_name",
    "binding_path",
    "binding_root",
    "container_service_name",
    "container_service_path",
    "container_service_root",
    "layout_item_name",
    "layout_item_path",
    "layout_path",
    "layout_root",
    "parse_binding_name",
    "parse_container_service_name",
    "parse_layout_item_name",
    "parse_saved_model_name",
    "parse_task_key",
    "saved_model_dir",
    "saved_model_path",
    "saved_models_root",
    "service_root",
    "task_key",
    "task_path",
]

ENTRY_REPLICA_ID_WIDTH = 11
# Monolith's replica id when neither REPLICA_ID nor MY_POD_NAME gives one (utils.replica_id_from_pod_name).
UNSET_REPLICA_ID = -1
_DIGITS = re.compile(r"[0-9]+")


class ServerType(StrEnum):
    """Server types that register in the v1 tree (and the AgentService ServerType names)."""

    PS = "ps"
    ENTRY = "entry"
    DENSE = "dense"


def _name(value: str, what: str, *, colon_ok: bool = False) -> str:
    """Validate one path component (ZooKeeper forbids empty, ``.``, ``..`` and NUL)."""
    bad = not value or value in (".", "..") or "/" in value or "\x00" in value or (not colon_ok and ":" in value)
    if bad:
        allowed = "" if colon_ok else " or ':'"
        raise InvalidArgumentError(f"bad {what} {value!r}: must be non-empty, not '.'/'..', without '/'{allowed}")
    return value


def _non_negative(value: int, what: str) -> int:
    if value < 0:
        raise InvalidArgumentError(f"bad {what} {value}: must be >= 0")
    return value


def _parse_decimal(text: str, what: str, path: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise InvalidArgumentError(f"bad {what} {text!r} in path {path!r}")
    return int(text)


def _parse_replica_id(text: str, path: str) -> int:
    if text == str(UNSET_REPLICA_ID):
        return UNSET_REPLICA_ID
    return _parse_decimal(text, "replica id", path)


# --------------------------------------------------------------------------- v1 service registry


def service_root(bzid: str, base_name: str, idc: str | None = None, cluster: str | None = None) -> str:
    """``/{bzid}/service/{base_name}``, plus ``/{idc}:{cluster}`` when both are given (dc_aware)."""
    root = f"/{_name(bzid, 'bzid')}/service/{_name(base_name, 'base_name')}"
    if idc is None and cluster is None:
        return root
    if idc is None or cluster is None:
        raise InvalidArgumentError("dc_aware paths need both idc and cluster")
    return f"{root}/{_name(idc, 'idc')}:{_name(cluster, 'cluster')}"


class TaskKey(NamedTuple):
    """``{server_type}:{task}``: a v1 task directory name and a v1 HeartBeat key."""

    server_type: ServerType
    task: int


def task_key(server_type: ServerType, task: int) -> str:
    """``"{server_type}:{task}"``."""
    return f"{ServerType(server_type).value}:{_non_negative(task, 'task')}"


def parse_task_key(name: str) -> TaskKey:
    """Inverse of :func:`task_key`; InvalidArgumentError naming ``name`` when malformed."""
    kind, sep, task = name.partition(":")
    try:
        server_type = ServerType(kind)
    except ValueError:
        raise InvalidArgumentError(f"bad server type {kind!r} in {name!r}") from None
    if not sep:
        raise InvalidArgumentError(f"bad task key {name!r}: expected '<server_type>:<task>'")
    return TaskKey(server_type, _parse_decimal(task, "task", name))


def task_path(
    bzid: str,
    base_name: str,
    server_type: ServerType,
    task: int,
    idc: str | None = None,
    cluster: str | None = None,
) -> str:
    """Directory holding the replicas of one task (watch its children to track replicas)."""
    return f"{service_root(bzid, base_name, idc, cluster)}/{task_key(server_type, task)}"


@dataclass(frozen=True)
class ReplicaPath:
    """One replica's registry node; construction validates every field."""

    bzid: str
    base_name: str
    server_type: ServerType
    task: int
    replica_id: int
    idc: str | None = None
    cluster: str | None = None

    def __post_init__(self) -> None:
        try:
            # Normalise a plain "ps"/"entry"/"dense" string so `is ServerType.ENTRY` checks hold.
            object.__setattr__(self, "server_type", ServerType(self.server_type))
        except ValueError:
            raise InvalidArgumentError(f"bad server type {self.server_type!r}") from None
        # service_root/task_key validate names, task and the idc/cluster pairing.
        task_path(self.bzid, self.base_name, self.server_type, self.task, self.idc, self.cluster)
        if self.replica_id < 0 and self.replica_id != UNSET_REPLICA_ID:
            raise InvalidArgumentError(f"bad replica_id {self.replica_id}: must be >= 0, or -1 (no replica id)")

    @property
    def has_id(self) -> bool:
        """False for the leaf ``-1`` (a replica started without a replica id)."""
        return self.replica_id != UNSET_REPLICA_ID

    @property
    def dc_aware(self) -> bool:
        return self.idc is not None

    @property
    def task_path(self) -> str:
        """The parent directory, ``.../{server_type}:{task}``."""
        return task_path(self.bzid, self.base_name, self.server_type, self.task, self.idc, self.cluster)

    @property
    def replica_name(self) -> str:
        """The leaf: entry ids zero-padded to 11 digits, others plain decimal; ``-1`` is never padded."""
        if self.server_type is ServerType.ENTRY and self.has_id:
            return f"{self.replica_id:0{ENTRY_REPLICA_ID_WIDTH}d}"
        return str(self.replica_id)

    @property
    def path(self) -> str:
        return f"{self.task_path}/{self.replica_name}"

    @classmethod
    def parse(cls, path: str) -> ReplicaPath:
        """Parse a v1 replica path (either layout); InvalidArgumentError naming ``path`` otherwise.

        Replica ids with non-canonical padding are accepted (``.path`` then re-pads them), and so is the leaf
        ``-1`` (Monolith's readers take any leaf ``int()`` accepts; ``-1`` is the only non-canonical one its
        writers produce). Other signed leaves are refused.
        """
        parts = path.split("/")
        if len(parts) not in (6, 7) or parts[0] != "" or parts[2] != "service":
            raise InvalidArgumentError(
                f"not a replica path: {path!r} "
                "(expected /bzid/service/base_name/[idc:cluster/]server_type:task/replica_id)"
            )
        idc: str | None = None
        cluster: str | None = None
        if len(parts) == 7:
            idc, sep, cluster = parts[4].partition(":")
            if not sep:
                raise InvalidArgumentError(f"bad idc:cluster {parts[4]!r} in path {path!r}")
        try:
            key = parse_task_key(parts[-2])
            return cls(
                bzid=parts[1],
                base_name=parts[3],
                server_type=key.server_type,
                task=key.task,
                replica_id=_parse_replica_id(parts[-1], path),
                idc=idc,
                cluster=cluster,
            )
        except InvalidArgumentError as exc:
            if path in exc.message:
                raise
            raise InvalidArgumentError(f"{exc.message} (in path {path!r})") from None


# --------------------------------------------------------------------------- v3 layout


def saved_models_root(bzid: str) -> str:
    return f"/{_name(bzid, 'bzid')}/saved_models"


def saved_model_dir(bzid: str, model: str) -> str:
    return f"{saved_models_root(bzid)}/{_name(model, 'model')}"


def saved_model_path(bzid: str, model: str, sub_graph: str) -> str:
    """``/{bzid}/saved_models/{model}/{sub_graph}`` (data: model_base_path and version_policy JSON)."""
    return f"{saved_model_dir(bzid, model)}/{_name(sub_graph, 'sub_graph')}"


def parse_saved_model_name(name: str) -> str:
    """The leaf of a saved-model path is the sub_graph itself; validates it."""
    return _name(name, "sub_graph")


def layout_root(bzid: str) -> str:
    return f"/{_name(bzid, 'bzid')}/layouts"


def layout_path(bzid: str, layout: str) -> str:
    return f"{layout_root(bzid)}/{_name(layout, 'layout')}"


class LayoutItemLeaf(NamedTuple):
    model: str
    sub_graph: str


def layout_item_name(model: str, sub_graph: str) -> str:
    return f"{_name(model, 'model')}:{_name(sub_graph, 'sub_graph')}"


def layout_item_path(bzid: str, layout: str, model: str, sub_graph: str) -> str:
    """``/{bzid}/layouts/{layout}/{model}:{sub_graph}``."""
    return f"{layout_path(bzid, layout)}/{layout_item_name(model, sub_graph)}"


def parse_layout_item_name(name: str) -> LayoutItemLeaf:
    """``{model}:{sub_graph}`` -> LayoutItemLeaf."""
    parts = name.split(":")
    if len(parts) != 2:
        raise InvalidArgumentError(f"bad layout item {name!r}: expected '<model>:<sub_graph>'")
    return LayoutItemLeaf(_name(parts[0], "model"), _name(parts[1], "sub_graph"))


def binding_root(bzid: str) -> str:
    return f"/{_name(bzid, 'bzid')}/binding"


def binding_model_path(bzid: str, model: str) -> str:
    return f"{binding_root(bzid)}/{_name(model, 'model')}"


class BindingLeaf(NamedTuple):
    sub_graph: str
    ctx_cluster: str
    ctx_id: str


def binding_name(sub_graph: str, ctx_cluster: str, ctx_id: str) -> str:
    head = f"{_name(sub_graph, 'sub_graph')}:{_name(ctx_cluster, 'ctx_cluster')}"
    return f"{head}:{_name(ctx_id, 'ctx_id', colon_ok=True)}"


def binding_path(bzid: str, model: str, sub_graph: str, ctx_cluster: str, ctx_id: str) -> str:
    """``/{bzid}/binding/{model}/{sub_graph}:{ctx_cluster}:{ctx_id}`` (ephemeral)."""
    return f"{binding_model_path(bzid, model)}/{binding_name(sub_graph, ctx_cluster, ctx_id)}"


def parse_binding_name(name: str) -> BindingLeaf:
    """``{sub_graph}:{ctx_cluster}:{ctx_id}`` -> BindingLeaf (ctx_id keeps any further ``:``)."""
    parts = name.split(":", 2)
    if len(parts) != 3:
        raise InvalidArgumentError(f"bad binding {name!r}: expected '<sub_graph>:<ctx_cluster>:<ctx_id>'")
    return BindingLeaf(
        _name(parts[0], "sub_graph"), _name(parts[1], "ctx_cluster"), _name(parts[2], "ctx_id", colon_ok=True)
    )


def container_service_root(bzid: str) -> str:
    return f"/{_name(bzid, 'bzid')}/container_service"


class ContainerLeaf(NamedTuple):
    ctx_cluster: str
    ctx_id: str


def container_service_name(ctx_cluster: str, ctx_id: str) -> str:
    return f"{_name(ctx_cluster, 'ctx_cluster')}:{_name(ctx_id, 'ctx_id', colon_ok=True)}"


def container_service_path(bzid: str, ctx_cluster: str, ctx_id: str) -> str:
    """``/{bzid}/container_service/{ctx_cluster}:{ctx_id}`` (data: the container's addresses JSON)."""
    return f"{container_service_root(bzid)}/{container_service_name(ctx_cluster, ctx_id)}"


def parse_container_service_name(name: str) -> ContainerLeaf:
    """``{ctx_cluster}:{ctx_id}`` -> ContainerLeaf (ctx_id keeps any further ``:``)."""
    parts = name.split(":", 1)
    if len(parts) != 2:
        raise InvalidArgumentError(f"bad container service {name!r}: expected '<ctx_cluster>:<ctx_id>'")
    return ContainerLeaf(_name(parts[0], "ctx_cluster"), _name(parts[1], "ctx_id", colon_ok=True))
