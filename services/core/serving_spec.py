"""The entry's serving spec: how request features become the dense network's input.

Monolith builds this mapping into its exported graph; we keep it as ``serving_spec.json`` in every entry
version folder (written by ``export-demo`` or by a user's export step). Format (version 1)::

    {
      "format_version": 1,
      "model_name": "demo",
      "num_ps": 2,
      "tables": [{"name": "user", "dim": 8}, ...],
      "features": [
        {"name": "user_id", "slot": 1, "table": "user", "pooling": "sum"},
        {"name": "hist", "slot": 3, "table": "item", "pooling": "firstn", "first_n": 3}, ...
      ],
      "dense_inputs": [{"name": "ctx", "dim": 2}],
      "dense": {"backend": "numpy",
                "layers": [{"weight": "dense/layer0_w.npy", "bias": "dense/layer0_b.npy", "activation": "relu"}, ...]}
                | {"backend": "onnx", "file": "dense.onnx"}
                | {"backend": "remote", "sub_model": "dense_0"},   (dense_alone: a dense server scores)
      "output_name": "scores",                       (or "outputs", below; not both)
      "outputs": [{"name": "ctr", "width": 1}, {"name": "cvr", "width": 1}],
      "max_batch_size": 1024,
      "ignore_unknown_features": false,
      "instance_fid_v1": "keep",                     (optional: "to_v2", the default, or "keep")
      "inputs": ["example_batch"]                    (optional: the input kinds taken; default all three)
    }

The dense network's input row is the pooled features in ``features`` order (``sum``/``mean``: width dim;
``firstn``: the first N embeddings concatenated, zero-padded, width N*dim) followed by ``dense_inputs``.
Sparse features are matched by name (feature lists, ExampleBatch, tf.Example) or by slot (v1 fids of an
Instance: slot = fid >> 54).

What the entry answers: without ``outputs``, one output named ``output_name`` (default ``scores``) holding every
column of the dense network's [batch, k] answer. With ``outputs`` (multi-task heads, as a Monolith entry signature
has one output per head), the network's columns are split, in order, into the named outputs: ``width`` columns each,
the widths summing to k (checked when the version loads). Giving both keys is an error: ``output_name`` names the
only output, and with ``outputs`` there is none. The network's whole matrix is then called ``scores`` where it still
needs a name: a ``dense_0`` server (``"backend": "remote"``) answers it under its ``dense_spec.json``
``output_name``, which must stay ``scores``.

``inputs`` names the Predict inputs the model takes (``instances``, ``example_batch``, ``examples``), as a Monolith
entry's signature lists the one its serving input receiver defines: GetModelMetadata lists those, and a request
with another is INVALID_ARGUMENT. Left out, all three are taken and listed (a request gives one of them); a client
that fills every input the metadata lists (Monolith's generic predictor client) needs the key.

``instance_fid_v1`` says what the tables are keyed by, for an Instance's ``fid`` (v1 fids): ``to_v2`` (the
default) converts each to its v2 fid before the lookup; ``keep`` looks the raw v1 fid up. Monolith's Instance
parser does the latter for a model that declares no fid-v2 feature, so such a model's tables hold v1 keys. With
``keep`` every feature's slot must be a v1 slot (below 1024).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.fid_bits import FID_V1_SLOTS
from monolith_serving.core.predict_signature import INPUT_KINDS

SPEC_FILE = "serving_spec.json"
FORMAT_VERSION = 1


class Pooling(str, enum.Enum):
    SUM = "sum"
    MEAN = "mean"
    FIRSTN = "firstn"


class DenseBackend(str, enum.Enum):
    NUMPY = "numpy"
    ONNX = "onnx"
    REMOTE = "remote"  # Monolith's dense_alone: the ``dense_0`` sub-model runs in its own server


# The one dense sub-model Monolith exports (REFERENCE §1: "Optional dense_0").
DENSE_SUB_MODEL = "dense_0"


ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")


class InstanceFidV1(str, enum.Enum):
    """What the entry does with an Instance's v1 fids before the lookup (the spec key ``instance_fid_v1``)."""

    TO_V2 = "to_v2"  # ``slot << 48 | (fid & (2**48 - 1))``: tables keyed by v2 fids
    KEEP = "keep"  # the raw v1 fid: tables keyed by v1 fids (a Monolith model without fid-v2 features)


@dataclass(frozen=True)
class TableSpec:
    name: str
    dim: int


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    slot: int
    table: str
    pooling: Pooling
    first_n: int = 0

    def width(self, dim: int) -> int:
        return dim * self.first_n if self.pooling is Pooling.FIRSTN else dim


@dataclass(frozen=True)
class DenseInputSpec:
    name: str
    dim: int


@dataclass(frozen=True)
class LayerSpec:
    weight: str
    bias: str
    activation: str


@dataclass(frozen=True)
class DenseSpec:
    backend: DenseBackend
    layers: tuple[LayerSpec, ...] = ()
    file: str = ""
    sub_model: str = ""  # remote only: which sub-model's server runs the network

    def to_json(self) -> dict[str, Any]:
        dense: dict[str, Any] = {"backend": self.backend.value}
        if self.backend is DenseBackend.NUMPY:
            dense["layers"] = [
                {"weight": layer.weight, "bias": layer.bias, "activation": layer.activation} for layer in self.layers
            ]
        elif self.backend is DenseBackend.ONNX:
            dense["file"] = self.file
        else:
            dense["sub_model"] = self.sub_model
        return dense


@dataclass(frozen=True)
class OutputSpec:
    """One named output: ``width`` consecutive columns of the dense network's answer."""

    name: str
    width: int


DEFAULT_OUTPUT_NAME = "scores"


@dataclass(frozen=True)
class ServingSpec:
    model_name: str
    num_ps: int
    tables: tuple[TableSpec, ...]
    features: tuple[FeatureSpec, ...]
    dense_inputs: tuple[DenseInputSpec, ...]
    dense: DenseSpec
    output_name: str = DEFAULT_OUTPUT_NAME  # the only output when ``outputs`` is empty
    max_batch_size: int = 1024
    ignore_unknown_features: bool = False
    instance_fid_v1: InstanceFidV1 = InstanceFidV1.TO_V2
    outputs: tuple[OutputSpec, ...] = ()  # named column groups of the network's answer; empty: one output
    inputs: tuple[str, ...] = INPUT_KINDS  # the Predict input kinds taken, in INPUT_KINDS order

    def __post_init__(self) -> None:
        if self.outputs and self.output_name != DEFAULT_OUTPUT_NAME:
            raise InvalidArgumentError("a serving spec gives either 'output_name' or 'outputs', not both")

    def table(self, name: str) -> TableSpec:
        for table in self.tables:
            if table.name == name:
                return table
        raise NotFoundError(f"serving spec has no table {name!r}")

    @property
    def input_width(self) -> int:
        sparse = sum(f.width(self.table(f.table).dim) for f in self.features)
        return sparse + sum(d.dim for d in self.dense_inputs)

    def to_json(self) -> dict[str, Any]:
        data = {
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "num_ps": self.num_ps,
            "tables": [{"name": t.name, "dim": t.dim} for t in self.tables],
            "features": [
                {"name": f.name, "slot": f.slot, "table": f.table, "pooling": f.pooling.value}
                | ({"first_n": f.first_n} if f.pooling is Pooling.FIRSTN else {})
                for f in self.features
            ],
            "dense_inputs": [{"name": d.name, "dim": d.dim} for d in self.dense_inputs],
            "dense": self.dense.to_json(),
            "max_batch_size": self.max_batch_size,
            "ignore_unknown_features": self.ignore_unknown_features,
        }
        if self.outputs:
            data["outputs"] = [{"name": o.name, "width": o.width} for o in self.outputs]
        else:
            data["output_name"] = self.output_name
        if self.instance_fid_v1 is not InstanceFidV1.TO_V2:
            # Only when not the default: specs written before the key existed stay byte-identical.
            data["instance_fid_v1"] = self.instance_fid_v1.value
        if self.inputs != INPUT_KINDS:
            data["inputs"] = list(self.inputs)
        return data


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise InvalidArgumentError(f"{where}: missing key {key!r}")
    value = obj[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidArgumentError(f"{where}: {key!r} must be an integer, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise InvalidArgumentError(f"{where}: {key!r} must be {kind.__name__}, got {value!r}")
    return value


def parse_serving_spec(data: Mapping[str, Any], where: str = SPEC_FILE) -> ServingSpec:
    """Validates and converts the JSON object; every error names the file and the key."""
    version = _field(data, "format_version", int, where)
    if version != FORMAT_VERSION:
        raise InvalidArgumentError(f"{where}: unsupported format_version {version}")
    tables = tuple(
        TableSpec(_field(t, "name", str, f"{where} tables[{i}]"), _field(t, "dim", int, f"{where} tables[{i}]"))
        for i, t in enumerate(_field(data, "tables", list, where))
    )
    table_names = {t.name for t in tables}
    if any(t.dim <= 0 for t in tables):
        raise InvalidArgumentError(f"{where}: every table dim must be positive")
    features = []
    for i, f in enumerate(_field(data, "features", list, where)):
        at = f"{where} features[{i}]"
        try:
            pooling = Pooling(_field(f, "pooling", str, at))
        except ValueError as error:
            raise InvalidArgumentError(f"{at}: pooling must be one of sum, mean, firstn") from error
        table = _field(f, "table", str, at)
        if table not in table_names:
            raise InvalidArgumentError(f"{at}: unknown table {table!r}")
        first_n = _field(f, "first_n", int, at) if pooling is Pooling.FIRSTN else 0
        if pooling is Pooling.FIRSTN and first_n <= 0:
            raise InvalidArgumentError(f"{at}: first_n must be positive")
        features.append(FeatureSpec(_field(f, "name", str, at), _field(f, "slot", int, at), table, pooling, first_n))
    dense_inputs = tuple(
        DenseInputSpec(
            _field(d, "name", str, f"{where} dense_inputs[{i}]"), _field(d, "dim", int, f"{where} dense_inputs[{i}]")
        )
        for i, d in enumerate(data.get("dense_inputs", []))
    )
    dense = parse_dense_spec(_field(data, "dense", dict, where), f"{where} dense", allow_remote=True)
    names = [f.name for f in features] + [d.name for d in dense_inputs]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"{where}: feature names must be unique")
    instance_fid_v1 = _instance_fid_v1(data, where)
    outputs = _outputs(data, where)
    if instance_fid_v1 is InstanceFidV1.KEEP:
        for i, feature in enumerate(features):
            if not 0 <= feature.slot < FID_V1_SLOTS:
                raise InvalidArgumentError(
                    f"{where} features[{i}]: slot {feature.slot} is not a v1 slot (0 to {FID_V1_SLOTS - 1}), "
                    "which 'instance_fid_v1': 'keep' needs"
                )
    return ServingSpec(
        model_name=_field(data, "model_name", str, where),
        num_ps=_field(data, "num_ps", int, where),
        tables=tables,
        features=tuple(features),
        dense_inputs=dense_inputs,
        dense=dense,
        output_name=str(data.get("output_name", DEFAULT_OUTPUT_NAME)),
        max_batch_size=int(data.get("max_batch_size", 1024)),
        ignore_unknown_features=bool(data.get("ignore_unknown_features", False)),
        instance_fid_v1=instance_fid_v1,
        outputs=outputs,
        inputs=_inputs(data, where),
    )


def _inputs(data: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if "inputs" not in data:
        return INPUT_KINDS
    raw = _field(data, "inputs", list, where)
    unknown = [kind for kind in raw if kind not in INPUT_KINDS]
    if not raw or unknown or len(set(raw)) != len(raw):
        raise InvalidArgumentError(
            f"{where}: 'inputs' must list some of {', '.join(INPUT_KINDS)}, each once; got {raw!r}"
        )
    return tuple(kind for kind in INPUT_KINDS if kind in raw)


def _outputs(data: Mapping[str, Any], where: str) -> tuple[OutputSpec, ...]:
    if "outputs" not in data:
        return ()
    if "output_name" in data:
        raise InvalidArgumentError(
            f"{where}: give either 'output_name' (one output) or 'outputs' (named heads), not both"
        )
    raw = _field(data, "outputs", list, where)
    if not raw:
        raise InvalidArgumentError(f"{where}: 'outputs' must list at least one output (or leave the key out)")
    outputs: list[OutputSpec] = []
    for i, item in enumerate(raw):
        at = f"{where} outputs[{i}]"
        if not isinstance(item, dict):
            raise InvalidArgumentError(f"{at}: must be an object with 'name' and 'width', got {item!r}")
        name = _field(item, "name", str, at)
        width = _field(item, "width", int, at)
        if not name:
            raise InvalidArgumentError(f"{at}: 'name' must not be empty")
        if width <= 0:
            raise InvalidArgumentError(f"{at}: 'width' must be positive, got {width}")
        if any(o.name == name for o in outputs):
            raise InvalidArgumentError(f"{at}: output name {name!r} is given twice")
        outputs.append(OutputSpec(name, width))
    return tuple(outputs)


def _instance_fid_v1(data: Mapping[str, Any], where: str) -> InstanceFidV1:
    value = data.get("instance_fid_v1", InstanceFidV1.TO_V2.value)
    choices = [c.value for c in InstanceFidV1]
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(f"{where}: 'instance_fid_v1' must be one of {', '.join(choices)}, got {value!r}")
    return InstanceFidV1(value)


def parse_dense_spec(raw: Mapping[str, Any], where: str, *, allow_remote: bool) -> DenseSpec:
    """The ``dense`` object (also used by the dense sub-model's ``dense_spec.json``, where the network
    itself must be there, so ``remote`` is refused)."""
    backends = [b.value for b in DenseBackend if allow_remote or b is not DenseBackend.REMOTE]
    try:
        backend = DenseBackend(_field(raw, "backend", str, where))
    except ValueError:
        backend = None
    if backend is None or backend.value not in backends:
        raise InvalidArgumentError(f"{where}: backend must be one of {', '.join(backends)}")
    if backend is DenseBackend.NUMPY:
        layers = []
        for i, layer in enumerate(_field(raw, "layers", list, where)):
            at = f"{where}.layers[{i}]"
            activation = _field(layer, "activation", str, at)
            if activation not in ACTIVATIONS:
                raise InvalidArgumentError(f"{at}: activation must be one of {', '.join(ACTIVATIONS)}")
            layers.append(LayerSpec(_field(layer, "weight", str, at), _field(layer, "bias", str, at), activation))
        return DenseSpec(backend, layers=tuple(layers))
    if backend is DenseBackend.ONNX:
        return DenseSpec(backend, file=_field(raw, "file", str, where))
    sub_model = _field(raw, "sub_model", str, where)
    if sub_model != DENSE_SUB_MODEL:
        raise InvalidArgumentError(f"{where}: sub_model must be {DENSE_SUB_MODEL!r}, got {sub_model!r}")
    return DenseSpec(backend, sub_model=sub_model)


def read_spec_object(path: Path, missing: str) -> dict[str, Any]:
    """The JSON object in ``path``; NotFoundError naming ``missing`` when the file is absent, InvalidArgumentError
    when it is not JSON or not an object. Shared by the serving and dense specs."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise NotFoundError(missing) from error
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{path}: top level must be a JSON object")
    return data


def write_spec_object(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_serving_spec(entry_version_dir: Path) -> ServingSpec:
    path = entry_version_dir / SPEC_FILE
    data = read_spec_object(path, f"no {SPEC_FILE} in entry version folder {str(entry_version_dir)!r}")
    return parse_serving_spec(data, str(path))


def write_serving_spec(entry_version_dir: Path, spec: ServingSpec) -> None:
    write_spec_object(entry_version_dir / SPEC_FILE, spec.to_json())
