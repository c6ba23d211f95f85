"""The dense sub-model's spec: ``dense_0/<version>/dense_spec.json`` (Monolith's ``dense_alone``).

With ``dense_alone`` the entry pools the embeddings and a separate dense server runs the network. The
entry's serving spec then says ``"dense": {"backend": "remote", "sub_model": "dense_0"}`` and the network
lives in the dense sub-model's version folder, described by (format 1)::

    {
      "format_version": 1,
      "input_width": 82,
      "dense": {"backend": "numpy",
                "layers": [{"weight": "dense/layer0_w.npy", "bias": "dense/layer0_b.npy", "activation": "relu"}, ...]}
                | {"backend": "onnx", "file": "dense.onnx"},
      "output_name": "scores"
    }

``dense`` has the same shape as in ``serving_spec.json`` (``serving_spec.DenseSpec``); paths are relative
to the version folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.serving_spec import (
    FORMAT_VERSION,
    DenseSpec,
    _field,
    parse_dense_spec,
    read_spec_object,
    write_spec_object,
)

DENSE_SPEC_FILE = "dense_spec.json"


@dataclass(frozen=True)
class DenseModelSpec:
    input_width: int  # columns of the [batch, input_width] float input
    dense: DenseSpec  # numpy or onnx, never remote
    output_name: str = "scores"

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "input_width": self.input_width,
            "dense": self.dense.to_json(),
            "output_name": self.output_name,
        }


def parse_dense_model_spec(data: Mapping[str, Any], where: str = DENSE_SPEC_FILE) -> DenseModelSpec:
    """Validates and converts the JSON object; every error names the file and the key."""
    version = _field(data, "format_version", int, where)
    if version != FORMAT_VERSION:
        raise InvalidArgumentError(f"{where}: unsupported format_version {version}")
    width = _field(data, "input_width", int, where)
    if width <= 0:
        raise InvalidArgumentError(f"{where}: 'input_width' must be positive, got {width}")
    dense = parse_dense_spec(_field(data, "dense", dict, where), f"{where} dense", allow_remote=False)
    output_name = _field(data, "output_name", str, where) if "output_name" in data else "scores"
    if not output_name:
        raise InvalidArgumentError(f"{where}: 'output_name' must not be empty")
    return DenseModelSpec(input_width=width, dense=dense, output_name=output_name)


def load_dense_model_spec(version_dir: Path) -> DenseModelSpec:
    path = version_dir / DENSE_SPEC_FILE
    data = read_spec_object(path, f"no {DENSE_SPEC_FILE} in dense version folder {str(version_dir)!r}")
    return parse_dense_model_spec(data, str(path))


def write_dense_model_spec(version_dir: Path, spec: DenseModelSpec) -> None:
    write_spec_object(version_dir / DENSE_SPEC_FILE, spec.to_json())
