"""Finding sub-models and versions in a Monolith export, and choosing versions by policy.

Layout (REFERENCE §2)::

    <base_path>/<sub_model>/<version>/...           version: a decimal integer
    <base_path>/<sub_model>/ExportSaverListenerState  (optional, text-format ServingModelState)

A model config's ``base_path`` points at one sub-model folder (``<base_path>/ps_0``); its version
folders are the integer-named children. Folders being written (``*-temp``, names that are not integers)
are never versions.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.proto_gen.monolith.model_export import export_pb2
from monolith_serving.proto_gen.tensorflow_serving.config import (
    file_system_storage_path_source_pb2,
    model_server_config_pb2,
)

STATE_FILE = "ExportSaverListenerState"
ServableVersionPolicy = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy


class PolicyKind(str, enum.Enum):
    LATEST = "latest"
    LATEST_ONCE = "latest_once"
    SPECIFIC = "specific"
    ALL = "all"


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a sub-model to serve. ``num_versions`` applies to latest/latest_once."""

    kind: PolicyKind = PolicyKind.LATEST
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, policy: ServableVersionPolicy) -> VersionPolicy:
        choice = policy.WhichOneof("policy_choice")
        if choice is None or choice == "latest":
            return cls(PolicyKind.LATEST, max(1, policy.latest.num_versions))
        if choice == "latest_once":
            return cls(PolicyKind.LATEST_ONCE, max(1, policy.latest_once.num_versions))
        if choice == "all":
            return cls(PolicyKind.ALL)
        return cls(PolicyKind.SPECIFIC, versions=tuple(sorted(policy.specific.versions)))

    def to_proto(self) -> ServableVersionPolicy:
        policy = ServableVersionPolicy()
        if self.kind is PolicyKind.LATEST:
            policy.latest.num_versions = self.num_versions
        elif self.kind is PolicyKind.LATEST_ONCE:
            policy.latest_once.num_versions = self.num_versions
        elif self.kind is PolicyKind.ALL:
            policy.all.SetInParent()
        else:
            policy.specific.versions.extend(self.versions)
        return policy

    def choose(self, available: Iterable[int], already_chosen: Sequence[int] = ()) -> list[int]:
        """The versions to serve, oldest first.

        ``already_chosen`` matters only for latest_once: once it has picked versions it keeps them and
        never moves to newer ones by itself (a new config or an explicit reload starts over).
        """
        present = sorted(set(available))
        if self.kind is PolicyKind.LATEST:
            return present[-self.num_versions :] if present else []
        if self.kind is PolicyKind.LATEST_ONCE:
            if already_chosen:
                return sorted(already_chosen)
            return present[-self.num_versions :] if present else []
        if self.kind is PolicyKind.ALL:
            return present
        wanted = set(self.versions)
        return [v for v in present if v in wanted]


_VERSION_NAME = re.compile(r"0|[1-9][0-9]{0,18}")


def parse_version(name: str) -> int | None:
    """The version number of a folder name, or None when it is not a version folder.

    Only ASCII decimal digits without leading zeros (``str.isdigit`` also takes ``²``, which ``int`` refuses):
    versions are found again as ``version_dir(base, version)``, so ``0123`` would name a folder ``123`` that
    does not exist. At most 19 digits: versions travel as int64."""
    if not _VERSION_NAME.fullmatch(name):
        return None
    version = int(name)
    return version if version < 2**63 else None


def list_versions(sub_model_dir: Path) -> list[int]:
    """Integer-named child folders of a sub-model folder, ascending. A missing folder is NOT_FOUND."""
    if not sub_model_dir.is_dir():
        raise NotFoundError(f"model base path {str(sub_model_dir)!r} does not exist or is not a folder")
    versions = []
    for child in sub_model_dir.iterdir():
        version = parse_version(child.name)
        if version is not None and child.is_dir():
            versions.append(version)
    return sorted(versions)


def version_dir(sub_model_dir: Path, version: int) -> Path:
    return sub_model_dir / str(version)


def list_sub_models(base_path: Path) -> list[str]:
    """Sub-model folder names (``entry``, ``ps_0`` …) under an export base, sorted."""
    if not base_path.is_dir():
        raise NotFoundError(f"export base {str(base_path)!r} does not exist or is not a folder")
    return sorted(
        child.name
        for child in base_path.iterdir()
        if child.is_dir() and (child.name == "entry" or child.name.startswith(("ps_", "dense")))
    )


def ps_index(sub_model: str) -> int | None:
    """The PS index of ``ps_3`` or ``model:ps_3``; None for other sub-models."""
    leaf = sub_model.rsplit(":", 1)[-1]
    if not leaf.startswith("ps_") or not leaf[3:].isdigit():
        return None
    return int(leaf[3:])


def read_listener_state(sub_model_dir: Path) -> list[export_pb2.ServingEntry]:
    """The entries of ``ExportSaverListenerState`` (newest last); empty when the file is absent."""
    path = sub_model_dir / STATE_FILE
    if not path.exists():
        return []
    return parse_listener_state(path.read_text(), str(path))


def parse_listener_state(text: str, where: str) -> list[export_pb2.ServingEntry]:
    """The entries of an ``ExportSaverListenerState`` text (newest last), parsed as the text-format
    ServingModelState it is, on one line or many; InvalidArgumentError naming ``where`` when it is not one."""
    try:
        state = text_format.Parse(text, export_pb2.ServingModelState())
    except text_format.ParseError as error:
        raise InvalidArgumentError(f"{where}: not a text-format ServingModelState: {error}") from error
    return list(state.entries)


def write_listener_state(sub_model_dir: Path, entries: Iterable[tuple[str, int]]) -> None:
    state = export_pb2.ServingModelState()
    for export_dir, global_step in entries:
        state.entries.add(export_dir=export_dir, global_step=global_step)
    (sub_model_dir / STATE_FILE).write_text(text_format.MessageToString(state))


def read_model_server_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    """Parses a text-format ModelServerConfig file; errors name the file."""
    try:
        text = path.read_text()
    except OSError as error:
        raise NotFoundError(f"model config file {str(path)!r}: {error.strerror}") from error
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise InvalidArgumentError(f"model config file {str(path)!r}: {error}") from error


def model_server_config_text(config: model_server_config_pb2.ModelServerConfig) -> str:
    return str(text_format.MessageToString(config))
