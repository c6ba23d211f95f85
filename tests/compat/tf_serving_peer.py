"""Runs in a separate interpreter with only the PyPI ``tensorflow-protobuf`` descriptors loaded.

Our protos register the same full names (tensorflow.TensorProto, ...), so both sets cannot live in one
descriptor pool; the compat tests talk to this script over stdin/stdout as JSON instead.

Commands (one JSON object on stdin, one on stdout):
  {"op": "describe", "messages": [full names]} -> {name: [[field, number, type, repeated, type_name], ...]}
  {"op": "roundtrip", "message": full name, "hex": bytes} -> {"hex": re-serialized bytes}
  {"op": "build", "case": name} -> {"hex": bytes of a message the peer builds itself}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import symbol_database, wrappers_pb2  # noqa: F401
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, predict_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tf_serving_cases import build_case

_MODULES = {
    "tensorflow.serving.ModelSpec": model_pb2.ModelSpec,
    "tensorflow.serving.PredictRequest": predict_pb2.PredictRequest,
    "tensorflow.serving.PredictResponse": predict_pb2.PredictResponse,
    "tensorflow.serving.GetModelMetadataRequest": get_model_metadata_pb2.GetModelMetadataRequest,
    "tensorflow.serving.GetModelMetadataResponse": get_model_metadata_pb2.GetModelMetadataResponse,
    "tensorflow.serving.SignatureDefMap": get_model_metadata_pb2.SignatureDefMap,
    "tensorflow.TensorProto": tensor_pb2.TensorProto,
    "tensorflow.Example": example_pb2.Example,
}


def _describe(name: str) -> list[list[Any]]:
    pool = symbol_database.Default().pool
    descriptor = pool.FindMessageTypeByName(name)
    return [
        [
            f.name,
            f.number,
            f.type,
            f.is_repeated,
            (f.message_type.full_name if f.message_type else f.enum_type.full_name if f.enum_type else ""),
        ]
        for f in descriptor.fields
    ]


def _build(case: str) -> Any:
    return build_case(
        case,
        model_pb2=model_pb2,
        predict_pb2=predict_pb2,
        get_model_metadata_pb2=get_model_metadata_pb2,
        tensor_pb2=tensor_pb2,
        types_pb2=types_pb2,
    )


def main() -> None:
    command = json.loads(sys.stdin.read())
    op = command["op"]
    if op == "describe":
        result: Any = {name: _describe(name) for name in command["messages"]}
    elif op == "roundtrip":
        message = _MODULES[command["message"]]()
        message.ParseFromString(bytes.fromhex(command["hex"]))
        result = {"hex": message.SerializeToString(deterministic=True).hex()}
    elif op == "build":
        result = {"hex": _build(command["case"]).SerializeToString(deterministic=True).hex()}
    else:
        raise SystemExit(f"unknown op {op}")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
