"""The hosted models of a TF Serving ``ModelServerConfig`` (``model_config_list``), for the PS and the dense server."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import VersionPolicy
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2

C = TypeVar("C")

HostedModelFactory = Callable[[str, Path, VersionPolicy, Mapping[str, int]], C]
"""(name, base_path, policy, version_labels) -> the server's model config; raises InvalidArgumentError for a
name the server cannot host."""


def hosted_models_from_proto(
    config: model_server_config_pb2.ModelServerConfig, make: HostedModelFactory[C]
) -> tuple[C, ...]:
    """One model config per ``model_config_list`` entry, in order; each needs a name and a base_path, and no
    name may repeat."""
    if config.WhichOneof("config") == "custom_model_config":
        raise InvalidArgumentError("custom_model_config is not supported; use model_config_list")
    result: list[C] = []
    seen: set[str] = set()
    for entry in config.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise InvalidArgumentError("every model config needs a name and a base_path")
        if entry.name in seen:
            raise InvalidArgumentError(f"model {entry.name!r} is configured twice")
        seen.add(entry.name)
        policy = VersionPolicy.from_proto(entry.model_version_policy)
        result.append(make(entry.name, Path(entry.base_path), policy, dict(entry.version_labels)))
    return tuple(result)
