"""The command lines Monolith's agent gives tensorflow_model_server, per role, as argv lists (written from what
monolith/agent_service/utils.py ``AgentConfig.get_cmd_and_port`` (agent v1) and tfs_wrapper.py
``TFSWrapper._prepare_cmd`` (agent v3, unified) put on them), for the tests that run our servers with them.

Monolith joins its flags with spaces and splits the string on whitespace, so every flag is one ``--name=value``
argument; an unset TCE_PSM / TCE_CLUSTER leaves an empty value (``--archon_rpc_psm=``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

# (model config file, platform config file, gRPC port, REST port, archon port) -> argv
ArgvBuilder = Callable[[Path, Path, int, int, int], list[str]]

# Always passed to every v1 server, after --model_config_file.
V1_SERVICE_FLAGS = (
    "--archon_rpc_psm=",
    "--archon_rpc_cluster=",
    "--metrics_namespace_prefix=",
    "--log_conf=../conf/log4j.properties",
)
# agent.conf's fetch_ps_timeout_ms, fetch_ps_long_conn_num, fetch_ps_retry and aio_thread_num, passed to the entry
# and the dense server; the timeout and retry away from their defaults (200, 2) so a test sees them arrive.
ENTRY_TO_PS_FLAGS = (
    "--archon_entry_to_ps_rpc_timeout=350",
    "--archon_entry_to_ps_long_conn_num=100",
    "--archon_entry_to_ps_rpc_retry=3",
    "--archon_async_dispatcher_threads=20",
)
FETCH_PS_TIMEOUT_MS, FETCH_PS_RETRY = 350, 3

# Every TfServingConfig setting away from its default, as Monolith spells it: bools lower-case, numbers as Python
# prints them. (--file_system_poll_wait_seconds and --platform_config_file have rules of their own.)
ALL_SETTINGS = (
    "--enable_batching=true",
    "--allow_version_labels_for_unavailable_models=true",
    "--batching_parameters_file=/opt/tiger/conf/batching.cfg",
    "--num_load_threads=4",
    "--num_unload_threads=2",
    "--max_num_load_retries=3",
    "--load_retry_interval_micros=1000000",
    "--flush_filesystem_caches=false",
    "--tensorflow_session_parallelism=2",
    "--tensorflow_intra_op_parallelism=4",
    "--tensorflow_inter_op_parallelism=4",
    "--per_process_gpu_memory_fraction=0.5",
    "--allow_growth=false",
    "--saved_model_tags=serve",
    "--grpc_channel_arguments=grpc.max_connection_age_ms=2000",
    "--grpc_max_threads=8",
    "--enable_model_warmup=false",
    "--remove_unused_fields_from_bundle_metagraph=false",
    "--enable_signature_method_name_check=true",
    "--xla_cpu_compilation_enabled=true",
    "--enable_profiler=false",
)
# The flags of ALL_SETTINGS no server uses, in the order our warning names them (cli_flags.TFS_COMPAT_FLAGS).
ALL_SETTINGS_UNUSED = (
    "--enable_batching",
    "--allow_version_labels_for_unavailable_models",
    "--batching_parameters_file",
    "--num_unload_threads",
    "--max_num_load_retries",
    "--load_retry_interval_micros",
    "--flush_filesystem_caches",
    "--tensorflow_session_parallelism",
    "--tensorflow_intra_op_parallelism",
    "--tensorflow_inter_op_parallelism",
    "--per_process_gpu_memory_fraction",
    "--allow_growth",
    "--saved_model_tags",
    "--grpc_max_threads",
    "--enable_model_warmup",
    "--remove_unused_fields_from_bundle_metagraph",
    "--enable_signature_method_name_check",
    "--xla_cpu_compilation_enabled",
    "--enable_profiler",
)


def _ports(grpc_port: int, rest_port: int, archon_port: int) -> tuple[str, ...]:
    return (f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--archon_port={archon_port}")


def v1_ps(config: Path, platform: Path, grpc_port: int, rest_port: int, archon_port: int) -> list[str]:
    """agent v1, a PS: file_system_poll_wait_seconds_ps (default 0) always given."""
    return [
        f"--model_config_file={config}",
        *V1_SERVICE_FLAGS,
        *_ports(grpc_port, rest_port, archon_port),
        "--file_system_poll_wait_seconds=0",
        f"--platform_config_file={platform}",
    ]


def v1_entry(config: Path, platform: Path, grpc_port: int, rest_port: int, archon_port: int) -> list[str]:
    """agent v1, the entry (long connections disabled in agent.conf: one more flag)."""
    return [
        f"--model_config_file={config}",
        *V1_SERVICE_FLAGS,
        *_ports(grpc_port, rest_port, archon_port),
        *ENTRY_TO_PS_FLAGS,
        "--archon_entry_to_ps_long_conn_enable=false",
        f"--platform_config_file={platform}",
    ]


def v1_dense(config: Path, platform: Path, grpc_port: int, rest_port: int, archon_port: int) -> list[str]:
    """agent v1, the dense server of a dense_alone model with enable_batching on: that flag comes twice."""
    return [
        f"--model_config_file={config}",
        *V1_SERVICE_FLAGS,
        *_ports(grpc_port, rest_port, archon_port),
        "--enable_batching=true",
        *ENTRY_TO_PS_FLAGS,
        "--enable_batching=true",
        f"--platform_config_file={platform}",
    ]


def v3_unified(config: Path, platform: Path, grpc_port: int, rest_port: int, archon_port: int) -> list[str]:
    """agent v3 (TFSWrapper): the container's one server, started on an empty model list."""
    return [
        f"--model_config_file={config}",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        "--model_config_file_poll_wait_seconds=60",
        f"--archon_port={archon_port}",
        "--archon_rpc_psm=",
        "--archon_rpc_cluster=",
        "--metrics_namespace_prefix=",
        f"--archon_entry_to_ps_rpc_timeout={FETCH_PS_TIMEOUT_MS}",
        "--conf_file=conf/service.conf",
        "--log_conf=conf/log4j.properties",
        f"--platform_config_file={platform}",
    ]


def model_config(name: str, base_path: Path) -> str:
    """A text ModelServerConfig with one model, as the v1 agent writes it."""
    return (
        f'model_config_list {{ config {{ name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" '
        "model_version_policy { latest { num_versions: 1 } } } }\n"
    )


def flagfile(argv: Sequence[str], *, title: str) -> str:
    """``argv`` as an absl flagfile (``--flagfile=FILE``): a comment line naming it, then one flag per line."""
    return "".join(f"{line}\n" for line in (f"# {title}", *argv))


def single_dash(argv: Sequence[str]) -> list[str]:
    """``argv`` with absl's one-dash spelling of every flag (``-port=8500``)."""
    return [arg[1:] if arg.startswith("--") else arg for arg in argv]
