"""Writing a child's ``--model_config_file`` (text-format ModelServerConfig) and its other start-up files.

The file is replaced atomically (write a sibling temp file, then rename) so a child re-reading it
never sees half a config. Entries keep the given order; the text is deterministic, so callers can
compare configs to skip needless reloads.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from monolith_serving.agent.config import ChildFile, ModelEntry
from monolith_serving.core.export_layout import model_server_config_text
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2

__all__ = ["build_model_server_config", "write_child_files", "write_model_config"]


def build_model_server_config(models: Iterable[ModelEntry]) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.SetInParent()  # an empty list is still a model_config_list
    for model in models:
        entry = config.model_config_list.config.add(
            name=model.name, base_path=model.base_path, model_platform="tensorflow"
        )
        entry.model_version_policy.CopyFrom(model.policy.to_proto())
    return config


def write_model_config(path: Path, models: Iterable[ModelEntry]) -> model_server_config_pb2.ModelServerConfig:
    """Write the config atomically and return it (for a HandleReloadConfigRequest)."""
    config = build_model_server_config(models)
    _write_atomically(path, model_server_config_text(config))
    return config


def write_child_files(files: Iterable[ChildFile]) -> None:
    """Write the other files a child reads at start (``ServerLaunchSpec.files``), each atomically: a restarted child
    may start while the agent rewrites them."""
    for file in files:
        _write_atomically(file.path, file.text)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
