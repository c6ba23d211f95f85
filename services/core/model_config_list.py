"""The hosted models of a TF Serving ``ModelServerConfig`` (``model_config_list``), for the PS and the dense server,
and the checks every server makes before a ``HandleReloadConfigRequest`` changes anything.

A reload is refused as a whole, leaving the previous config serving, when it
- sets no config at all (``reload_request_config``): INVALID_ARGUMENT. An absent config is not "host nothing";
  an explicit empty ``model_config_list {}`` is, and the model manager and the agents send it on purpose;
- moves a model, or adds one, to a ``base_path`` that is not an existing folder (``check_base_path``): NOT_FOUND.
  A folder with no version yet is fine (versions may be distributed later), and so is a model keeping the path it
  has, whatever is there now: what the reload does not change, it does not check;
- points a version label at a version of the model that is not AVAILABLE (``check_version_labels``):
  FAILED_PRECONDITION, TF Serving's answer with ``--allow_version_labels_for_unavailable_models=false`` (its
  default). A label the model already has, unchanged, is kept whatever its version's state.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from monolith_serving.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from monolith_serving.core.export_layout import VersionPolicy
from monolith_serving.core.model_state import ModelState
from monolith_serving.core.version_lifecycle import HostedConfig, VersionLifecycle
from monolith_serving.proto_gen.tensorflow_serving.apis import model_management_pb2
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


def reload_request_config(
    request: model_management_pb2.ReloadConfigRequest,
) -> model_server_config_pb2.ModelServerConfig:
    """The config of a HandleReloadConfigRequest; INVALID_ARGUMENT when it sets none (an empty body included)."""
    if request.config.WhichOneof("config") is None:
        raise InvalidArgumentError(
            "ReloadConfigRequest.config is not set; send a model_config_list "
            "(an empty 'model_config_list {}' unloads every model)"
        )
    return request.config


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # no permission to look; a NUL in the path
        return False


def check_base_path(name: str, base_path: Path, *, hosted_from: Path | None = None) -> None:
    """NOT_FOUND, naming the model and the path, unless ``base_path`` is an existing folder or the one the model
    is hosted from already (``hosted_from``). Blocking (one stat)."""
    if base_path == hosted_from or _is_folder(base_path):
        return
    raise NotFoundError(
        f"model {name!r}: base_path {str(base_path)!r} does not exist or is not a folder; the config is not changed"
    )


def check_version_labels(
    name: str, labels: Mapping[str, int], *, available: Collection[int], kept: Mapping[str, int]
) -> None:
    """FAILED_PRECONDITION for a label that the reload sets (not in ``kept`` with the same version) on a version
    not in ``available`` (the model's AVAILABLE versions now, before the reload loads anything)."""
    for label, version in sorted(labels.items()):
        if kept.get(label) == version or version in available:
            continue
        raise FailedPreconditionError(
            f"model {name!r}: version label {label!r} points at version {version}, which is not available for "
            f"inference (available: {sorted(available)}); label a version once it is AVAILABLE"
        )


def check_reload(configs: Sequence[HostedConfig], lifecycle: VersionLifecycle[Any, Any, Any]) -> None:
    """``check_base_path`` and ``check_version_labels`` for every model of a reload, against what
    ``lifecycle`` (the PS's or the dense server's) hosts now."""
    for config in configs:
        hosted = lifecycle.models.get(config.name)
        if hosted is None:
            check_base_path(config.name, config.base_path)
            check_version_labels(config.name, config.version_labels, available=(), kept={})
            continue
        check_base_path(config.name, config.base_path, hosted_from=hosted.config.base_path)
        available = {v.version for v in hosted.versions.values() if v.state is ModelState.AVAILABLE}
        check_version_labels(config.name, config.version_labels, available=available, kept=hosted.config.version_labels)
