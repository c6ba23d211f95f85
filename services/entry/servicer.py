"""gRPC face of the entry: TF Serving's PredictionService and ModelService over ``EntryModel``.

The servicers only translate protobuf <-> the core's types; errors raised by the core are package
errors that ``ErrorMappingInterceptor`` turns into status codes (INVALID_ARGUMENT, NOT_FOUND, …).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import grpc
import numpy.typing as npt
from google.protobuf import any_pb2, wrappers_pb2

from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError, NotFoundError
from monolith_serving.core.export_layout import VersionPolicy
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.model_config_list import reload_request_config
from monolith_serving.core.predict_only import PredictOnly
from monolith_serving.core.predict_signature import DEFAULT_SIGNATURE
from monolith_serving.core.status_reply import model_status_reply
from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModel, EntryModelConfig, LoadedVersion
from monolith_serving.entry.ps_client import ps_model_name
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2
from monolith_serving.proto_gen.tensorflow.core.protobuf import meta_graph_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2

logger = logging.getLogger(__name__)

PS_VERSIONS_KEY = "x-monolith-ps-versions"
_INPUT_SHAPES = {"instances": [-1], "example_batch": [1], "examples": [-1]}


def _requested_version(model: EntryModel, spec: Any) -> int | None:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return int(spec.version.value)
    if choice == "version_label":
        config = model.config
        labels = dict(config.version_labels) if config is not None else {}
        if spec.version_label not in labels:
            raise NotFoundError(f"model {spec.name!r} has no version label {spec.version_label!r}")
        return labels[spec.version_label]
    return None


def format_ps_versions(entry_model_name: str, ps_versions: dict[int, int]) -> str:
    """``ps_0=V,ps_1=V`` (shards the request touched, in order)."""
    return ",".join(f"{ps_model_name(entry_model_name, s)}={v}" for s, v in sorted(ps_versions.items()))


class EntryPredictionServicer(PredictOnly, prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    server_name = "the entry"

    def __init__(self, model: EntryModel, metrics: EntryMetrics) -> None:
        self._model = model
        self._metrics = metrics
        self._ok: Any = None  # the requests{code="OK"} child, resolved on the first success
        self._ps_versions_text: dict[tuple[str, tuple[tuple[int, int], ...]], str] = {}

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        started = time.monotonic()
        try:
            response = await self._predict(request, context)
        except MonolithServingError as error:
            self._metrics.requests.labels(status_code_for(error).name).inc()
            raise
        if self._ok is None:
            self._ok = self._metrics.requests.labels("OK")
        self._ok.inc()
        self._metrics.latency.observe(time.monotonic() - started)
        return response

    def _ps_versions(self, entry_model_name: str, ps_versions: dict[int, int]) -> str:
        """``format_ps_versions``, cached: the same few (model, versions) pairs repeat on every request."""
        key = (entry_model_name, tuple(ps_versions.items()))
        text = self._ps_versions_text.get(key)
        if text is None:
            if len(self._ps_versions_text) > 64:  # versions change rarely; never let old ones pile up
                self._ps_versions_text.clear()
            text = self._ps_versions_text[key] = format_ps_versions(entry_model_name, ps_versions)
        return text

    async def _predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        inputs: dict[str, npt.NDArray[Any]] = {
            name: from_tensor_proto(tensor, name) for name, tensor in request.inputs.items()
        }
        result = await self._model.predict(
            name=spec.name,
            version=_requested_version(self._model, spec),
            signature_name=spec.signature_name,
            inputs=inputs,
            output_filter=list(request.output_filter),
            timeout_s=context.time_remaining(),
        )
        response = predict_pb2.PredictResponse()
        for name, array in result.outputs.items():
            response.outputs[name].CopyFrom(to_tensor_proto(array))
        response.model_spec.name = spec.name
        response.model_spec.version.value = result.version
        response.model_spec.signature_name = spec.signature_name or DEFAULT_SIGNATURE
        if result.ps_versions:
            context.set_trailing_metadata(((PS_VERSIONS_KEY, self._ps_versions(spec.name, result.ps_versions)),))
        return response

    def resolve_model(self, spec: model_pb2.ModelSpec) -> None:
        self._model.resolve(spec.name, _requested_version(self._model, spec))

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        spec = request.model_spec
        loaded = self._model.resolve(spec.name, _requested_version(self._model, spec))
        config = self._model.config
        assert config is not None
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = loaded.version
        fields = list(request.metadata_field) or ["signature_def"]
        for name in fields:
            packed = any_pb2.Any()
            if name == "signature_def":
                packed.Pack(self._signature_map(loaded.spec.inputs, self._output_shapes(loaded)))
            elif name == "base_path":
                packed.Pack(wrappers_pb2.StringValue(value=str(config.base_path)))
            elif name == "num_versions":
                packed.Pack(wrappers_pb2.Int64Value(value=len(self._model.served_versions)))
            elif name == "signature_name":
                packed.Pack(wrappers_pb2.StringValue(value=DEFAULT_SIGNATURE))
            else:
                raise InvalidArgumentError(
                    f"unsupported metadata_field {name!r}; supported: signature_def, base_path, "
                    "num_versions, signature_name"
                )
            response.metadata[name].CopyFrom(packed)
        return response

    @staticmethod
    def _output_shapes(loaded: LoadedVersion) -> list[tuple[str, int]]:
        """(name, width) of every output; one output's width is the network's (-1 until a remote one answered)."""
        outputs = loaded.outputs
        if not outputs.split:
            return [(outputs.columns[0].name, loaded.dense.output_width)]
        return [(c.name, c.width) for c in outputs.columns]

    @staticmethod
    def _signature_map(
        inputs: tuple[str, ...], outputs: list[tuple[str, int]]
    ) -> get_model_metadata_pb2.SignatureDefMap:
        signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
        for name in inputs:
            info = signature.inputs[name]
            info.name = name
            info.dtype = types_pb2.DT_STRING
            for size in _INPUT_SHAPES[name]:
                info.tensor_shape.dim.add(size=size)
        for output_name, output_width in outputs:
            out = signature.outputs[output_name]
            out.name = output_name
            out.dtype = types_pb2.DT_FLOAT
            out.tensor_shape.dim.add(size=-1)
            out.tensor_shape.dim.add(size=output_width)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        signature_map.signature_def[DEFAULT_SIGNATURE].CopyFrom(signature)
        return signature_map


def entry_config_from_proto(
    config: model_server_config_pb2.ModelServerConfig, defaults: EntryModelConfig | None
) -> EntryModelConfig | None:
    """The entry's model from a ModelServerConfig: exactly one model, or none (an empty list, or a config file
    that sets no config: unload everything)."""
    if config.WhichOneof("config") == "custom_model_config":
        raise InvalidArgumentError("custom_model_config is not supported; use model_config_list")
    models = list(config.model_config_list.config)
    if not models:
        return None
    if len(models) > 1:
        raise InvalidArgumentError(f"the entry serves one model; the config lists {len(models)}")
    model = models[0]
    if not model.name or not model.base_path:
        raise InvalidArgumentError("model config needs name and base_path")
    base = EntryModelConfig(name=model.name, base_path=Path(model.base_path))
    template = defaults if defaults is not None else base
    return EntryModelConfig(
        name=model.name,
        base_path=Path(model.base_path),
        policy=VersionPolicy.from_proto(model.model_version_policy),
        version_labels=tuple(sorted(model.version_labels.items())),
        fetch_ps_timeout_ms=template.fetch_ps_timeout_ms,
        max_batch_size=template.max_batch_size,
        max_load_attempts=template.max_load_attempts,
    )


class EntryModelServicer(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, model: EntryModel) -> None:
        self._model = model

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        statuses = self._model.status(spec.name, _requested_version(self._model, spec))
        return model_status_reply(statuses, {s.version: s.detail for s in statuses})

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        """Switches the entry to the config's model (an empty ``model_config_list {}`` unloads it). A request with no
        config, or one the entry cannot switch to, is refused and the previous model keeps serving
        (``EntryModel.reconfigure``)."""
        new_config = entry_config_from_proto(reload_request_config(request), self._model.config)
        await self._model.reconfigure(new_config)
        logger.info("reloaded model config: %s", new_config)
        return model_management_pb2.ReloadConfigResponse()
