"""Fields and enum values that Monolith's and TF Serving's protos have and ours once lacked.

Each check writes the field by its number (hand-encoded wire bytes, as the other side's code would send it) and
reads it back by name, or compares a descriptor with the number and type taken from the upstream .proto:
- TF Serving: tensorflow_serving/config/{model_server_config,logging_config,log_collector_config}.proto,
  tensorflow_serving/apis/{model_management,predict,input,classification,regression,inference}.proto;
- TensorFlow: tensorflow/core/framework/types.proto (the ``*_REF`` values);
- Monolith: idl/matrix/proto/{line_id,example}.proto,
  monolith/native_training/runtime/hash_table/optimizer/optimizer.proto (OptimizerDump).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from pathlib import Path
from textwrap import dedent

import pytest
from google.protobuf import descriptor_pb2, symbol_database, unknown_fields

from monolith_serving.client.call_inputs import read_model_config
from monolith_serving.core.export_layout import read_model_server_config
from monolith_serving.dense.config import dense_models_from_proto
from monolith_serving.entry.model import EntryModelConfig
from monolith_serving.entry.servicer import entry_config_from_proto
from monolith_serving.proto_gen.idl.matrix.proto import example_pb2, line_id_pb2
from monolith_serving.proto_gen.monolith.hash_table import entry_dump_pb2
from monolith_serving.proto_gen.tensorflow.core.framework import tensor_pb2, types_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    classification_pb2,
    model_management_pb2,
    predict_pb2,
)
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2
from monolith_serving.ps.config import SubModelConfig, sub_models_from_proto
from monolith_serving.unified.server import UnifiedConfig, UnifiedServer

F = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = F.LABEL_OPTIONAL, F.LABEL_REPEATED


# --- hand encoding of the wire format -------------------------------------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def v(number: int, value: int) -> bytes:  # varint field
    return tag(number, 0) + varint(value)


def ld(number: int, payload: bytes) -> bytes:  # length-delimited field
    return tag(number, 2) + varint(len(payload)) + payload


def f32(number: int, value: float) -> bytes:
    return tag(number, 5) + struct.pack("<f", value)


def f64(number: int, value: float) -> bytes:
    return tag(number, 1) + struct.pack("<d", value)


# --- descriptors against the upstream numbers and types --------------------------------------------------------

MSG, ENUM, STR, BYTES, BOOL = F.TYPE_MESSAGE, F.TYPE_ENUM, F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_BOOL
I32, I64, DBL = F.TYPE_INT32, F.TYPE_INT64, F.TYPE_DOUBLE
TS, RO = "tensorflow.serving.", "tensorflow.serving.PredictRequest.RequestOptions"

# (message, field, number, type, label, message/enum type or "", oneof or ""); proto3 `optional` fields sit in a
# synthetic oneof named "_<field>".
EXPECTED_FIELDS = [
    # TF Serving tensorflow_serving/config/{model_server_config,logging_config,log_collector_config}.proto
    (TS + "ModelConfig", "logging_config", 6, MSG, OPTIONAL, TS + "LoggingConfig", ""),
    (TS + "LoggingConfig", "log_collector_config", 1, MSG, OPTIONAL, TS + "LogCollectorConfig", ""),
    (TS + "LoggingConfig", "sampling_config", 2, MSG, OPTIONAL, TS + "SamplingConfig", ""),
    (TS + "LoggingConfig", "custom_logging_config", 3, MSG, OPTIONAL, "google.protobuf.Any", ""),
    (TS + "LogCollectorConfig", "type", 1, STR, OPTIONAL, "", ""),
    (TS + "LogCollectorConfig", "filename_prefix", 2, STR, OPTIONAL, "", ""),
    (TS + "SamplingConfig", "sampling_rate", 1, DBL, OPTIONAL, "", ""),
    (TS + "SamplingConfig", "attributes", 2, I32, OPTIONAL, "", ""),
    (TS + "SamplingConfig", "per_task_sampling_configs", 3, MSG, REPEATED, TS + "PerTaskSamplingConfig", ""),
    (TS + "PerTaskSamplingConfig", "dc", 1, STR, OPTIONAL, "", ""),
    (TS + "PerTaskSamplingConfig", "task_index", 2, I32, OPTIONAL, "", "_task_index"),
    (TS + "PerTaskSamplingConfig", "sampling_rate", 3, DBL, OPTIONAL, "", ""),
    # tensorflow_serving/apis/model_management.proto
    (TS + "ReloadConfigResponse", "metric", 2, MSG, REPEATED, TS + "Metric", ""),
    (TS + "Metric", "name", 1, STR, OPTIONAL, "", ""),
    (TS + "Metric", "int64_value_increase", 2, I64, OPTIONAL, "", "value_increase"),
    # tensorflow_serving/apis/predict.proto (newer than the PyPI tensorflow-protobuf 2.11 build)
    (TS + "PredictRequest", "predict_streamed_options", 5, MSG, OPTIONAL, TS + "PredictStreamedOptions", ""),
    (TS + "PredictRequest", "client_id", 6, BYTES, OPTIONAL, "", "_client_id"),
    (TS + "PredictRequest", "request_options", 7, MSG, OPTIONAL, RO, "_request_options"),
    (RO, "client_id", 1, BYTES, OPTIONAL, "", "_client_id"),
    (RO, "deterministic_mode", 2, ENUM, OPTIONAL, RO + ".DeterministicMode", "_deterministic_mode"),
    (RO, "return_additional_arrays_from_prefill", 3, BOOL, OPTIONAL, "", "_return_additional_arrays_from_prefill"),
    (RO, "return_stoptokens", 4, I64, REPEATED, "", ""),
    (RO, "return_all_stoptokens", 9, BOOL, OPTIONAL, "", "_return_all_stoptokens"),
    (RO, "max_cache_length", 6, I64, OPTIONAL, "", "_max_cache_length"),
    (TS + "PredictStreamedOptions", "request_state", 1, ENUM, OPTIONAL, TS + "PredictStreamedOptions.RequestState", ""),
    (TS + "PredictStreamedOptions", "split_dimensions", 2, MSG, REPEATED,
     TS + "PredictStreamedOptions.SplitDimensionsEntry", ""),
    (TS + "PredictStreamedOptions", "return_single_response", 3, BOOL, OPTIONAL, "", ""),
    # tensorflow_serving/apis/{input,classification,regression,inference}.proto
    (TS + "ClassificationRequest", "input", 2, MSG, OPTIONAL, TS + "Input", ""),
    (TS + "ClassificationResponse", "result", 1, MSG, OPTIONAL, TS + "ClassificationResult", ""),
    (TS + "RegressionRequest", "input", 2, MSG, OPTIONAL, TS + "Input", ""),
    (TS + "RegressionResponse", "result", 1, MSG, OPTIONAL, TS + "RegressionResult", ""),
    (TS + "MultiInferenceRequest", "tasks", 1, MSG, REPEATED, TS + "InferenceTask", ""),
    (TS + "MultiInferenceRequest", "input", 2, MSG, OPTIONAL, TS + "Input", ""),
    (TS + "MultiInferenceResponse", "results", 1, MSG, REPEATED, TS + "InferenceResult", ""),
    (TS + "Input", "example_list", 1, MSG, OPTIONAL, TS + "ExampleList", "kind"),
    (TS + "Input", "example_list_with_context", 2, MSG, OPTIONAL, TS + "ExampleListWithContext", "kind"),
    (TS + "InferenceResult", "classification_result", 2, MSG, OPTIONAL, TS + "ClassificationResult", "result"),
    (TS + "InferenceResult", "regression_result", 3, MSG, OPTIONAL, TS + "RegressionResult", "result"),
    # Monolith idl/matrix/proto/line_id.proto (proto2)
    ("idl.matrix.proto.LineId", "pre_actions", 23, I32, REPEATED, "", ""),
    ("idl.matrix.proto.LineId", "special_strategies", 39, I32, REPEATED, "", ""),
    ("idl.matrix.proto.LineId", "cid", 48, STR, OPTIONAL, "", ""),
    ("idl.matrix.proto.LineId", "is_draw", 87, BOOL, OPTIONAL, "", ""),
    ("idl.matrix.proto.LineId", "rank", 145, I32, OPTIONAL, "", ""),
    # Monolith idl/matrix/proto/example.proto (proto3)
    ("monolith.io.proto.Example", "named_raw_feature", 2, MSG, REPEATED, "monolith.io.proto.NamedRawFeature", ""),
    ("monolith.io.proto.NamedRawFeature", "name", 1, STR, OPTIONAL, "", ""),
    ("monolith.io.proto.NamedRawFeature", "raw_feature", 2, MSG, OPTIONAL, "monolith.io.proto.RawFeature", ""),
    ("monolith.io.proto.NamedRawFeature", "id", 3, I32, OPTIONAL, "", ""),
    # Monolith monolith/native_training/runtime/hash_table/optimizer/optimizer.proto (proto2)
    ("monolith.hash_table.OptimizerDump", "dump", 1, MSG, REPEATED, "monolith.hash_table.SingleOptimizerDump", ""),
]  # fmt: skip

# SingleOptimizerDump's oneof `type`: field -> (number, message)
SINGLE_OPTIMIZER_DUMP = {
    "adagrad": (1, "AdagradOptimizerDump"),
    "sgd": (2, "SgdOptimizerDump"),
    "ftrl": (3, "FtrlOptimizerDump"),
    "dynamic_wd_adagrad": (4, "DynamicWdAdagradOptimizerDump"),
    "adadelta": (6, "AdadeltaOptimizerDump"),
    "adam": (7, "AdamOptimizerDump"),
    "amsgrad": (8, "AmsgradOptimizerDump"),
    "momentum": (9, "MomentumOptimizerDump"),
    "rmsprop": (11, "RmspropOptimizerDump"),
    "rmspropv2": (12, "RmspropV2OptimizerDump"),
    "group_ftrl": (13, "GroupFtrlOptimizerDump"),
    "batch_softmax": (14, "BatchSoftmaxOptimizerDump"),
    "group_adagrad": (15, "GroupAdaGradOptimizerDump"),
}

EXPECTED_ENUMS = {
    "tensorflow.serving.SamplingConfig.Attributes": {
        "ATTR_DEFAULT": 0,
        "ATTR_REQUEST_ORIGIN": 1,
        "ATTR_REQUEST_CRITICALITY": 2,
    },
    "tensorflow.serving.PredictStreamedOptions.RequestState": {"NONE": 0, "SPLIT": 1, "END_SPLIT": 2, "CANCEL": 3},
    "tensorflow.serving.PredictRequest.RequestOptions.DeterministicMode": {
        "DETERMINISTIC_MODE_UNSPECIFIED": 0,
        "FIXED_DECODER_SLOT": 1,
    },
}

_POOL = symbol_database.Default().pool


@pytest.mark.parametrize(
    ("message", "name", "number", "kind", "label", "type_name", "oneof"),
    EXPECTED_FIELDS,
    ids=[f"{row[0]}.{row[1]}" for row in EXPECTED_FIELDS],
)
def test_field_matches_upstream(
    message: str, name: str, number: int, kind: int, label: int, type_name: str, oneof: str
) -> None:
    field = _POOL.FindMessageTypeByName(message).fields_by_name[name]
    declared = field.message_type or field.enum_type
    got = (
        field.number,
        field.type,
        field.is_repeated,
        declared.full_name if declared else "",
        field.containing_oneof.name if field.containing_oneof else "",
    )
    assert got == (number, kind, label == REPEATED, type_name, oneof)


def test_single_optimizer_dump_matches_upstream() -> None:
    descriptor = entry_dump_pb2.SingleOptimizerDump.DESCRIPTOR
    got = {f.name: (f.number, f.message_type.name) for f in descriptor.fields if f.containing_oneof is not None}
    assert got == SINGLE_OPTIMIZER_DUMP
    assert [f.name for f in descriptor.oneofs_by_name["type"].fields] == list(got)


@pytest.mark.parametrize("enum", sorted(EXPECTED_ENUMS))
def test_enum_matches_upstream(enum: str) -> None:
    values = {value.name: value.number for value in _POOL.FindEnumTypeByName(enum).values}
    assert values == EXPECTED_ENUMS[enum]


def test_reference_data_types_are_the_base_type_plus_100() -> None:
    names = {number: name for name, number in types_pb2.DataType.items()}
    refs = {number: name for number, name in names.items() if number > 100}
    assert sorted(refs) == list(range(101, 124))
    for number, name in refs.items():
        assert name == names[number - 100] + "_REF"
    # A TensorProto carrying one (e.g. from a TF1 graph dump) keeps its name instead of a bare number.
    tensor = tensor_pb2.TensorProto.FromString(v(1, 101))
    assert types_pb2.DataType.Name(tensor.dtype) == "DT_FLOAT_REF"
    assert types_pb2.DT_UINT64_REF == 123


# --- bytes written by number, read back by name -------------------------------------------------------------


def test_line_id_fields_by_number() -> None:
    data = (
        ld(23, varint(3) + varint(7))  # packed int32
        + v(39, 5)
        + v(39, 6)  # unpacked int32
        + ld(48, b"cid-1")
        + v(87, 1)
        + v(145, 42)
    )
    line_id = line_id_pb2.LineId.FromString(data)
    assert list(line_id.pre_actions) == [3, 7]
    assert list(line_id.special_strategies) == [5, 6]
    assert (line_id.cid, line_id.is_draw, line_id.rank) == ("cid-1", True, 42)
    # Nothing was left unknown, and writing back uses Monolith's encodings: pre_actions packed,
    # special_strategies one tag per value.
    assert line_id.SerializeToString() == data


def test_example_named_raw_feature_by_number() -> None:
    feature = ld(2, ld(1, struct.pack("<QQ", 11, 12)))  # Feature.fid_v2_list { value: [11, 12] }
    raw = ld(1, b"user_seq") + ld(2, ld(1, feature)) + v(3, 9)  # NamedRawFeature
    example = example_pb2.Example.FromString(ld(2, raw))
    (named,) = example.named_raw_feature
    assert (named.name, named.id) == ("user_seq", 9)
    assert list(named.raw_feature.feature[0].fid_v2_list.value) == [11, 12]


def test_entry_dump_optimizer_state_by_number() -> None:
    adam = f32(1, 0.5) + f32(1, 0.25) + f32(3, 0.9)  # m (unpacked floats), beta1_power
    single = ld(7, adam)  # SingleOptimizerDump.adam
    entry = entry_dump_pb2.EntryDump.FromString(tag(1, 1) + struct.pack("<q", -5) + f32(2, 1.0) + ld(3, ld(1, single)))
    assert entry.id == -5
    (dump,) = entry.opt.dump
    assert dump.WhichOneof("type") == "adam"
    assert list(dump.adam.m) == [0.5, 0.25]
    assert dump.adam.beta1_power == pytest.approx(0.9)


def test_reload_config_response_metric_by_number() -> None:
    response = model_management_pb2.ReloadConfigResponse.FromString(ld(2, ld(1, b"loads") + v(2, 3)))
    (metric,) = response.metric
    assert (metric.name, metric.WhichOneof("value_increase"), metric.int64_value_increase) == (
        "loads",
        "int64_value_increase",
        3,
    )


def test_predict_request_newer_fields_by_number() -> None:
    streamed = v(1, 2) + ld(2, ld(1, b"x") + v(2, 1)) + v(3, 1)  # END_SPLIT, split_dimensions {x: 1}, true
    options = ld(1, b"c2") + v(2, 1) + v(3, 1) + ld(4, varint(5) + varint(6)) + v(9, 1) + v(6, 4096)
    request = predict_pb2.PredictRequest.FromString(
        ld(1, ld(1, b"entry")) + ld(5, streamed) + ld(6, b"client") + ld(7, options)
    )
    assert request.model_spec.name == "entry"
    s = request.predict_streamed_options
    assert s.request_state == predict_pb2.PredictStreamedOptions.END_SPLIT
    assert dict(s.split_dimensions) == {"x": 1}
    assert s.return_single_response
    assert request.HasField("client_id") and request.client_id == b"client"
    o = request.request_options
    assert request.HasField("request_options")
    assert o.client_id == b"c2"
    assert o.deterministic_mode == predict_pb2.PredictRequest.RequestOptions.FIXED_DECODER_SLOT
    assert o.return_additional_arrays_from_prefill and o.return_all_stoptokens
    assert list(o.return_stoptokens) == [5, 6]
    assert o.max_cache_length == 4096
    assert not unknown_fields.UnknownFieldSet(request)


def test_classify_regress_multi_inference_bodies_by_number() -> None:
    example = ld(1, b"")  # tensorflow.Example with an empty Features
    request = classification_pb2.ClassificationRequest.FromString(ld(2, ld(1, ld(1, example))))
    assert request.input.WhichOneof("kind") == "example_list"
    assert len(request.input.example_list.examples) == 1
    with_context = classification_pb2.RegressionRequest.FromString(ld(2, ld(2, ld(1, example) + ld(2, example))))
    assert with_context.input.example_list_with_context.HasField("context")
    response = classification_pb2.ClassificationResponse.FromString(ld(1, ld(1, ld(1, ld(1, b"cat") + f32(2, 0.75)))))
    (cls,) = response.result.classifications[0].classes
    assert (cls.label, cls.score) == ("cat", 0.75)
    regression = classification_pb2.RegressionResponse.FromString(ld(1, ld(1, f32(1, 2.5))))
    assert regression.result.regressions[0].value == 2.5
    multi = classification_pb2.MultiInferenceRequest.FromString(ld(1, ld(1, ld(1, b"m")) + ld(2, b"classify")))
    assert (multi.tasks[0].model_spec.name, multi.tasks[0].method_name) == ("m", "classify")
    results = classification_pb2.MultiInferenceResponse.FromString(ld(1, ld(3, ld(1, f32(1, 1.0)))))
    assert results.results[0].WhichOneof("result") == "regression_result"


def test_model_config_logging_config_by_number() -> None:
    sampling = f64(1, 0.25) + v(2, 1) + ld(3, ld(1, b"lf") + v(2, 0) + f64(3, 0.5))
    logging = ld(1, ld(1, b"disk") + ld(2, b"/logs/req")) + ld(2, sampling)
    model = model_server_config_pb2.ModelConfig.FromString(ld(1, b"m") + ld(6, logging))
    config = model.logging_config
    assert (config.log_collector_config.type, config.log_collector_config.filename_prefix) == ("disk", "/logs/req")
    assert config.sampling_config.sampling_rate == 0.25
    assert config.sampling_config.attributes == 1
    (per_task,) = config.sampling_config.per_task_sampling_configs
    assert per_task.dc == "lf" and per_task.HasField("task_index") and per_task.task_index == 0
    assert per_task.sampling_rate == 0.5


# --- a TF Serving model config with logging_config: parsed, then ignored --------------------------------------

LOGGING = """
    logging_config {
      log_collector_config { type: "disk" filename_prefix: "/logs/requests" }
      sampling_config {
        sampling_rate: 0.01
        attributes: 3
        per_task_sampling_configs { dc: "lf" task_index: 2 sampling_rate: 0.5 }
      }
    }
"""


def _config_text(models: Sequence[tuple[str, Path]], logging: str) -> str:
    configs = "".join(
        f'config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" {logging} }}\n'
        for name, path in models
    )
    return f"model_config_list {{\n{configs}}}\n"


def _write(tmp_path: Path, name: str, models: Sequence[tuple[str, Path]], logging: str) -> Path:
    path = tmp_path / name
    path.write_text(dedent(_config_text(models, logging)))
    return path


def test_model_config_file_with_logging_config_parses(tmp_path: Path) -> None:
    path = _write(tmp_path, "models.config", [("ps_0", tmp_path / "ps_0")], LOGGING)
    (model,) = read_model_server_config(path).model_config_list.config
    assert model.name == "ps_0"
    assert model.logging_config.log_collector_config.filename_prefix == "/logs/requests"
    assert model.logging_config.sampling_config.per_task_sampling_configs[0].task_index == 2
    # `tfs_client load --config_file` reads the file the same way.
    assert read_model_config(path) == read_model_server_config(path)


def test_servers_ignore_logging_config(tmp_path: Path) -> None:
    """Every server's reading of a config with logging_config equals its reading of the same config without."""
    ps = [("ps_0", tmp_path / "ps_0")]
    dense = [("dense_0", tmp_path / "dense_0")]
    entry = [("entry", tmp_path / "entry")]
    for name, models in (("ps", ps), ("dense", dense), ("entry", entry)):
        with_logging = read_model_server_config(_write(tmp_path, f"{name}.with", models, LOGGING))
        without = read_model_server_config(_write(tmp_path, f"{name}.without", models, ""))
        assert with_logging != without
        if name == "ps":
            assert sub_models_from_proto(with_logging) == sub_models_from_proto(without)
        elif name == "dense":
            assert dense_models_from_proto(with_logging) == dense_models_from_proto(without)
        else:
            assert entry_config_from_proto(with_logging, None) == entry_config_from_proto(without, None)


def test_unified_server_applies_a_config_with_logging_config(tmp_path: Path) -> None:
    """--model_config_file (start-up apply) and HandleReloadConfigRequest (reload) both accept logging_config and
    hand the cores the same models as without it."""
    for sub in ("ps_0", "entry"):
        (tmp_path / sub).mkdir()
    models = [("demo:ps_0", tmp_path / "ps_0"), ("demo:entry", tmp_path / "entry")]
    with_logging = read_model_server_config(_write(tmp_path, "with.config", models, LOGGING))
    without = read_model_server_config(_write(tmp_path, "without.config", models, ""))

    async def scenario() -> list[tuple[tuple[SubModelConfig, ...], EntryModelConfig | None]]:
        server = UnifiedServer(UnifiedConfig(port=0, host="127.0.0.1", agent_address="127.0.0.1:1"))
        applied: list[tuple[tuple[SubModelConfig, ...], EntryModelConfig | None]] = []
        ps_models: list[tuple[SubModelConfig, ...]] = []

        async def ps_reload(models: Sequence[SubModelConfig], *, fresh: bool = True) -> None:
            ps_models.append(tuple(models))

        async def entry_apply(model: EntryModelConfig | None) -> None:
            applied.append((ps_models[-1], model))

        server.ps.reload = ps_reload  # type: ignore[method-assign]
        server.entry.apply = entry_apply  # type: ignore[method-assign]
        await server.apply(with_logging)
        await server.apply(without)
        await server.reload(with_logging)
        await server.stop()
        return applied

    first, second, third = asyncio.run(scenario())
    assert first == second == third
    assert [m.name for m in first[0]] == ["demo:ps_0"]
    assert first[1] is not None and first[1].name == "demo:entry"
