"""The dense server's configuration, parsed once from flags (and a model config file) in ``main``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from monolith_serving.core.cli_flags import TFS_GRPC_PORT
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import VersionPolicy
from monolith_serving.core.grpc_server import ChannelArguments
from monolith_serving.core.model_config_list import hosted_models_from_proto
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2


def is_dense_sub_model(name: str) -> bool:
    """``dense_0`` (agent v1) or ``<model>:dense_0`` (v3)."""
    head, _, digits = name.rsplit(":", 1)[-1].rpartition("_")
    return head == "dense" and digits.isdigit()


@dataclass(frozen=True)
class DenseModelConfig:
    """One hosted dense sub-model: where its versions are and which to serve."""

    name: str
    base_path: Path
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    version_labels: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not is_dense_sub_model(self.name):
            raise InvalidArgumentError(f"model {self.name!r} is not a dense sub-model (dense_<i> or <model>:dense_<i>)")


def dense_models_from_proto(config: model_server_config_pb2.ModelServerConfig) -> tuple[DenseModelConfig, ...]:
    """The ``model_config_list`` entries; names must be dense sub-models (``dense_<i>`` or ``<model>:dense_<i>``)."""
    return hosted_models_from_proto(config, DenseModelConfig)


@dataclass(frozen=True)
class DenseServerConfig:
    """Everything the dense process needs; built by ``main`` and passed down explicitly."""

    port: int = TFS_GRPC_PORT
    host: str = "0.0.0.0"
    grpc_socket_path: Path | None = None  # --grpc_socket_path: gRPC on this UNIX socket too
    metrics_port: int = 0
    grpc_channel_arguments: ChannelArguments = ()  # --grpc_channel_arguments
    model_config_file: Path | None = None
    model_config_file_poll_wait_s: float = 0.0  # re-read model_config_file this often (0: never)
    file_system_poll_wait_s: float = 1.0
    # Used when no config file is given: the single model of --model_name/--model_base_path.
    models: tuple[DenseModelConfig, ...] = ()
    num_load_threads: int = 1
    shutdown_grace_s: float = 2.0
    # The unified server starts a dense core with no models; they arrive by HandleReloadConfigRequest.
    models_from_reload: bool = False

    def __post_init__(self) -> None:
        if self.num_load_threads < 1:
            raise InvalidArgumentError(f"--num_load_threads must be >= 0 (0 counts as 1), got {self.num_load_threads}")
        if self.model_config_file is None and not self.models and not self.models_from_reload:
            raise InvalidArgumentError("give --model_config_file or --model_name with --model_base_path")
