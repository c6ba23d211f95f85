"""Thin gRPC servicers of the dense server: TF Serving's PredictionService and ModelService.

Predict contract (what ``entry.remote_dense`` sends): model ``dense_0`` (v3 ``<model>:dense_0``), signature
``dense`` (empty or ``serving_default`` are accepted too), input ``dense_input`` DT_FLOAT [batch, width]
-> output ``<output_name>`` DT_FLOAT [batch, k]; ``model_spec.version`` / ``version_label`` pin a version.
Errors are package errors mapped to status codes by ``ErrorMappingInterceptor``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.model_config_list import check_reload, reload_request_config
from monolith_serving.core.predict_only import PredictOnly
from monolith_serving.core.predict_signature import DEFAULT_SIGNATURE
from monolith_serving.core.status_reply import model_status_reply
from monolith_serving.core.tensor_codec import dtype_name, from_tensor_proto, to_tensor_proto
from monolith_serving.dense.config import dense_models_from_proto
from monolith_serving.dense.metrics import DenseMetrics
from monolith_serving.dense.versions import DenseNetwork, DenseVersionManager
from monolith_serving.entry.remote_dense import DENSE_INPUT, DENSE_SIGNATURE
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

logger = logging.getLogger(__name__)

SIGNATURE_ALIASES = ("", DEFAULT_SIGNATURE, DENSE_SIGNATURE)


def _pinned(spec: model_pb2.ModelSpec) -> tuple[int | None, str]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return int(spec.version.value), ""
    if choice == "version_label":
        return None, spec.version_label
    return None, ""


def dense_input(inputs: Any, width: int) -> npt.NDArray[np.float32]:
    """The [batch, width] float32 input; INVALID_ARGUMENT naming the input for anything else."""
    unknown = sorted(set(inputs) - {DENSE_INPUT})
    if unknown:
        raise InvalidArgumentError(f"unknown input(s) {unknown}; the dense signature takes {DENSE_INPUT!r} only")
    if DENSE_INPUT not in inputs:
        raise InvalidArgumentError(f"missing input {DENSE_INPUT!r} (DT_FLOAT [batch, {width}])")
    proto = inputs[DENSE_INPUT]
    if proto.dtype != types_pb2.DT_FLOAT:
        got = dtype_name(proto.dtype)  # DataType.Name raises on a number the enum lacks (proto3 keeps it)
        raise InvalidArgumentError(f"input {DENSE_INPUT!r} must be DT_FLOAT [batch, {width}], got {got}")
    array = from_tensor_proto(proto, DENSE_INPUT)
    if array.ndim != 2 or array.shape[1] != width:
        raise InvalidArgumentError(f"input {DENSE_INPUT!r} has shape {list(array.shape)}, expected [batch, {width}]")
    x: npt.NDArray[np.float32] = array.astype(np.float32, copy=False)
    return x


def signature_defs(loaded: DenseNetwork) -> get_model_metadata_pb2.SignatureDefMap:
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    tensors = ((signature.inputs[DENSE_INPUT], DENSE_INPUT, loaded.spec.input_width),)
    outputs = ((signature.outputs[loaded.spec.output_name], loaded.spec.output_name, loaded.network.output_width),)
    for info, name, width in (*tensors, *outputs):
        info.name = name
        info.dtype = types_pb2.DT_FLOAT
        info.tensor_shape.dim.add(size=-1)
        info.tensor_shape.dim.add(size=width)
    result = get_model_metadata_pb2.SignatureDefMap()
    result.signature_def[DENSE_SIGNATURE].CopyFrom(signature)
    return result


class DensePredictionServicer(PredictOnly, prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    server_name = "the dense server"

    def __init__(self, versions: DenseVersionManager, metrics: DenseMetrics) -> None:
        self._versions = versions
        self._metrics = metrics

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        started = time.perf_counter()
        try:
            response = self._predict(request)
        except MonolithServingError as error:
            self._metrics.requests.labels(status_code_for(error).name).inc()
            raise
        self._metrics.requests.labels("OK").inc()
        self._metrics.latency.observe(time.perf_counter() - started)
        return response

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        version, label = _pinned(spec)
        _, servable = self._versions.resolve(spec.name, version, label)
        loaded = servable.require_loaded()
        if spec.signature_name not in SIGNATURE_ALIASES:
            raise InvalidArgumentError(f"model {spec.name!r} has no signature {spec.signature_name!r}; use 'dense'")
        output_name = loaded.spec.output_name
        unknown = [o for o in request.output_filter if o != output_name]
        if unknown:
            raise InvalidArgumentError(f"output_filter names unknown output(s) {unknown}; the output is {output_name}")
        x = dense_input(request.inputs, loaded.spec.input_width)
        self._metrics.batch_size.observe(len(x))
        scores = loaded.network.predict(x)
        response = predict_pb2.PredictResponse()
        response.outputs[output_name].CopyFrom(to_tensor_proto(np.ascontiguousarray(scores, dtype=np.float32)))
        response.model_spec.name = spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = spec.signature_name or DENSE_SIGNATURE
        return response

    def resolve_model(self, spec: model_pb2.ModelSpec) -> None:
        version, label = _pinned(spec)
        self._versions.resolve(spec.name, version, label)

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field) or ["signature_def"]
        if fields != ["signature_def"]:
            raise InvalidArgumentError(f"metadata_field must be ['signature_def'], got {fields}")
        version, label = _pinned(request.model_spec)
        _, servable = self._versions.resolve(request.model_spec.name, version, label)
        loaded = servable.require_loaded()
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(signature_defs(loaded))
        return response


class DenseModelServicer(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(
        self, versions: DenseVersionManager, *, after_reload: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._versions = versions
        self._after_reload = after_reload  # runs once each reload has settled or failed (health follows it)

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        version, label = _pinned(spec)
        if label:
            version = self._versions.resolve(spec.name, label=label)[1].version
        return model_status_reply(self._versions.status(spec.name, version))

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        """Replaces the hosted models and returns once their versions are settled (as TF Serving does). A bad
        config (``core.model_config_list``) is refused before anything changes."""
        configs = dense_models_from_proto(reload_request_config(request))
        check_reload(configs, self._versions)
        try:
            await self._versions.apply_config(configs, fresh=True)
        finally:
            if self._after_reload is not None:
                await self._after_reload()
        logger.info("reloaded model config: %s", [c.name for c in configs])
        return model_management_pb2.ReloadConfigResponse()
