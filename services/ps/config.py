"""The PS's configuration, parsed once from flags (and a model config file) in ``main``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from monolith_serving.core.cli_flags import TFS_GRPC_PORT
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import VersionPolicy, ps_index
from monolith_serving.core.grpc_server import ChannelArguments
from monolith_serving.core.model_config_list import hosted_models_from_proto
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2

DEFAULT_MAX_FIDS_PER_REQUEST = 1 << 21
# Parameter-sync rows queued for a version while it loads (replayed just before it serves). A load that never ends
# (a stalled file system) would otherwise queue a busy trainer's pushes until the process runs out of memory.
DEFAULT_MAX_PENDING_SYNC_BYTES = 1 << 30


@dataclass(frozen=True)
class SubModelConfig:
    """One hosted sub-model (``ps_0`` or ``model:ps_0``): where its versions are and which to serve."""

    name: str
    base_path: Path
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    version_labels: Mapping[str, int] = field(default_factory=dict)

    partition: int = field(init=False)  # the i of ps_<i>: this shard's fids satisfy fid mod num_ps == i

    def __post_init__(self) -> None:
        index = ps_index(self.name)
        if index is None:
            raise InvalidArgumentError(f"model {self.name!r} is not a PS sub-model (ps_<i> or <model>:ps_<i>)")
        object.__setattr__(self, "partition", index)  # frozen: set once, here


def sub_models_from_proto(config: model_server_config_pb2.ModelServerConfig) -> tuple[SubModelConfig, ...]:
    """The ``model_config_list`` entries; names must be PS sub-models (``ps_<i>`` or ``<model>:ps_<i>``)."""
    return hosted_models_from_proto(config, SubModelConfig)


def check_partitions(models: Sequence[SubModelConfig], num_ps: int) -> None:
    """INVALID_ARGUMENT for a sub-model whose partition is not a shard of ``num_ps`` (0: not known, no check); the
    same check for the command line and for a reload."""
    if num_ps:
        for model in models:
            if model.partition >= num_ps:
                raise InvalidArgumentError(f"model {model.name!r} is not a shard of --num_ps {num_ps}")


@dataclass(frozen=True)
class PsConfig:
    """Everything the PS process needs; built by ``main`` and passed down explicitly."""

    port: int = TFS_GRPC_PORT
    host: str = "0.0.0.0"
    grpc_socket_path: Path | None = None  # --grpc_socket_path: gRPC on this UNIX socket too
    metrics_port: int = 0
    model_config_file: Path | None = None
    model_config_file_poll_wait_s: float = 0.0
    file_system_poll_wait_s: float = 1.0
    # Used when no config file is given: the single model of --model_name/--model_base_path.
    models: tuple[SubModelConfig, ...] = ()
    num_ps: int = 0  # 0: do not check that fids belong to this shard
    max_fids_per_request: int = DEFAULT_MAX_FIDS_PER_REQUEST
    max_pending_sync_bytes: int = DEFAULT_MAX_PENDING_SYNC_BYTES
    grpc_channel_arguments: ChannelArguments = ()  # --grpc_channel_arguments
    num_load_threads: int = 1
    shutdown_grace_s: float = 2.0
    # The unified server starts a PS core with no models; they arrive by HandleReloadConfigRequest.
    models_from_reload: bool = False

    def __post_init__(self) -> None:
        if self.num_ps < 0:
            raise InvalidArgumentError(f"--num_ps must be >= 0, got {self.num_ps}")
        if self.max_fids_per_request < 1:
            raise InvalidArgumentError(f"--max_fids_per_request must be >= 1, got {self.max_fids_per_request}")
        if self.max_pending_sync_bytes < 0:
            raise InvalidArgumentError(f"--max_pending_sync_bytes must be >= 0, got {self.max_pending_sync_bytes}")
        if self.num_load_threads < 1:
            raise InvalidArgumentError(f"--num_load_threads must be >= 0 (0 counts as 1), got {self.num_load_threads}")
        if self.model_config_file is None and not self.models and not self.models_from_reload:
            raise InvalidArgumentError("give --model_config_file or --model_name with --model_base_path")
        check_partitions(self.models, self.num_ps)
