"""Thin gRPC servicers: translate TF Serving protobufs to PsCore / VersionStateManager calls and back."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError, NotFoundError
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.metric_children import LabelledChildren
from monolith_serving.core.model_config_list import check_reload, reload_request_config
from monolith_serving.core.predict_only import PredictOnly
from monolith_serving.core.status_reply import model_status_reply
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
from monolith_serving.ps.config import SubModelConfig, check_partitions, sub_models_from_proto
from monolith_serving.ps.core import (
    ID_SUFFIX,
    LOOKUP,
    LOOKUP_ALIASES,
    RAW_LOOKUP,
    RAW_LOOKUP_INPUTS,
    RAW_LOOKUP_OUTPUT,
    VALUE_SUFFIX,
    ModelRef,
    PsCore,
)
from monolith_serving.ps.metrics import PsMetrics
from monolith_serving.ps.sync import HASHTABLE_ASSIGN, RAW_ASSIGN, monolith_raw_assign, sync_kind
from monolith_serving.ps.table_store import TableSet
from monolith_serving.ps.wire import LookupResponseEncoder

_PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
ApplyConfig = Callable[[Sequence[SubModelConfig]], Awaitable[None]]


def model_ref(spec: model_pb2.ModelSpec) -> ModelRef:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return ModelRef(spec.name, version=int(spec.version.value))
    if choice == "version_label":
        return ModelRef(spec.name, label=spec.version_label)
    return ModelRef(spec.name)


def _signature(spec: model_pb2.ModelSpec) -> str:
    return LOOKUP if spec.signature_name in LOOKUP_ALIASES else spec.signature_name


class PsPredictionServicer(PredictOnly, prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    server_name = "a PS"

    def __init__(self, core: PsCore, metrics: PsMetrics) -> None:
        self._core = core
        self._metrics = metrics
        self._latency = LabelledChildren(metrics.request_latency)
        self._encoder = LookupResponseEncoder()

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse | bytes:
        """Lookups answer with the serialized response (``ps.wire``: each table's rows copied once); the
        server registers a response serializer that passes bytes through (``add_prediction_servicer``)."""
        started = time.perf_counter()
        spec = request.model_spec
        signature = _signature(spec)
        # Metric label: lookup, raw_lookup, hashtable_assign or table/raw_assign (Monolith's <name>/raw_assign
        # counts there).
        kind = signature if signature in (LOOKUP, RAW_LOOKUP) else (sync_kind(signature) or "unknown")
        ref = model_ref(spec)
        response: predict_pb2.PredictResponse | bytes
        try:
            if kind in (LOOKUP, RAW_LOOKUP):
                lookup = self._core.lookup if kind == LOOKUP else self._core.raw_lookup
                result = lookup(ref, request.inputs, request.output_filter)
                response = self._encoder.encode(result.outputs, spec.name, result.version, spec.signature_name)
            elif kind != "unknown":
                version, _rows = self._core.sync(ref, signature, request.inputs)
                response = predict_pb2.PredictResponse()
                response.model_spec.name = spec.name
                response.model_spec.version.value = version
                response.model_spec.signature_name = spec.signature_name
            else:
                raise NotFoundError(
                    f"signature {spec.signature_name!r} not found (PS signatures: {LOOKUP}, {RAW_LOOKUP}, "
                    f"{HASHTABLE_ASSIGN}, {RAW_ASSIGN}, MonolithMultiHashTable_<partition>/raw_assign)"
                )
        except MonolithServingError as error:
            self._metrics.request_errors.labels(kind, status_code_for(error).name).inc()
            raise
        self._latency[(kind,)].observe(time.perf_counter() - started)
        return response

    def resolve_model(self, spec: model_pb2.ModelSpec) -> None:
        ref = model_ref(spec)
        self._core.versions.resolve(ref.name, ref.version, ref.label)

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise InvalidArgumentError(f"metadata_field must be ['signature_def'], got {fields}")
        ref = model_ref(request.model_spec)
        _model, servable = self._core.versions.resolve(ref.name, ref.version, ref.label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = ref.name
        response.model_spec.version.value = servable.version
        if servable.loaded is not None:
            response.metadata["signature_def"].Pack(signature_defs(servable.loaded, _model.config.partition))
        return response


def _serialize_prediction_response(response: object) -> bytes:
    """Bytes (a lookup answer already serialized by ``ps.wire``) pass through; messages are serialized."""
    if isinstance(response, bytes):
        return response
    serialized: bytes = response.SerializeToString()  # type: ignore[attr-defined]
    return serialized


def add_prediction_servicer(
    servicer: prediction_service_pb2_grpc.PredictionServiceServicer, server: grpc.aio.Server
) -> None:
    """Registers ``servicer`` like the generated ``add_PredictionServiceServicer_to_server``, except that
    Predict's response serializer accepts pre-serialized bytes (also used by the unified server, whose
    Predict forwards PS lookups here)."""
    generated: dict[str, grpc.RpcMethodHandler] = {}

    class _Capture:
        def add_generic_rpc_handlers(self, handlers: object) -> None:
            pass  # the same handlers arrive by add_registered_method_handlers, which is all we keep

        def add_registered_method_handlers(self, service: str, method_handlers: dict[str, Any]) -> None:
            generated.update(method_handlers)

    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, _Capture())  # type: ignore[no-untyped-call]
    handlers = dict(generated)
    handlers["Predict"] = grpc.unary_unary_rpc_method_handler(
        servicer.Predict,
        request_deserializer=predict_pb2.PredictRequest.FromString,
        response_serializer=_serialize_prediction_response,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_PREDICTION_SERVICE, handlers),))
    server.add_registered_method_handlers(_PREDICTION_SERVICE, handlers)


def _tensor_info(name: str, datatype: int, dims: Sequence[int]) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=name, dtype=datatype)  # type: ignore[arg-type]
    for size in dims:
        info.tensor_shape.dim.add(size=size)
    return info


def signature_defs(tables: TableSet, partition: int) -> get_model_metadata_pb2.SignatureDefMap:
    """The PS contract (docs/ps.md) as SignatureDefs over the version's tables (-1: any length; a dim of -1: the
    table has no rows on this shard yet, so its width is not known). ``lookup`` lists our input names only
    (Monolith's bare ``<table>`` names are accepted too); ``raw_lookup`` is Monolith's multi-hash-table lookup,
    its ``id_split`` one offset per table plus one. The multi-hash-table push is listed under
    our name and Monolith's (``MonolithMultiHashTable_<partition>/raw_assign``); ``hashtable_assign`` lists our
    input names only (Monolith's ``MonolithHashTable_<table>_<partition>_id`` are accepted as aliases, but one
    push may not name a table twice, so a signature listing both would invite a refused request)."""
    sigs = get_model_metadata_pb2.SignatureDefMap()
    lookup = sigs.signature_def[LOOKUP]
    assign = sigs.signature_def[HASHTABLE_ASSIGN]
    for name in tables.order:
        dim = tables.tables[name].dim or -1
        ids = _tensor_info(name + ID_SUFFIX, types_pb2.DT_INT64, [-1])
        values = _tensor_info(name + VALUE_SUFFIX, types_pb2.DT_FLOAT, [-1, dim])
        lookup.inputs[name + ID_SUFFIX].CopyFrom(ids)
        lookup.outputs[name + VALUE_SUFFIX].CopyFrom(values)
        assign.inputs[name + ID_SUFFIX].CopyFrom(ids)
        assign.inputs[name + VALUE_SUFFIX].CopyFrom(values)
    ragged_ids = {
        "id": _tensor_info("id", types_pb2.DT_INT64, [-1]),
        "id_split": _tensor_info("id_split", types_pb2.DT_INT64, [len(tables.order) + 1]),
    }
    raw_lookup = sigs.signature_def[RAW_LOOKUP]
    for name in RAW_LOOKUP_INPUTS:
        raw_lookup.inputs[name].CopyFrom(ragged_ids[name])
    raw_lookup.outputs[RAW_LOOKUP_OUTPUT].CopyFrom(_tensor_info(RAW_LOOKUP_OUTPUT, types_pb2.DT_FLOAT, [-1]))
    raw = sigs.signature_def[RAW_ASSIGN]
    for name, info in ragged_ids.items():
        raw.inputs[name].CopyFrom(info)
    raw.inputs["flat_value"].CopyFrom(_tensor_info("flat_value", types_pb2.DT_FLOAT, [-1]))
    sigs.signature_def[monolith_raw_assign(partition)].CopyFrom(raw)
    return sigs


class PsModelServicer(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, core: PsCore, apply_config: ApplyConfig) -> None:
        self._core = core
        self._apply_config = apply_config

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        ref = model_ref(request.model_spec)
        version = ref.version
        if ref.label:
            version = self._core.versions.resolve(ref.name, label=ref.label)[1].version
        return model_status_reply(self._core.versions.status(ref.name, version))

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        """Replaces the hosted models and returns once their versions are settled (as TF Serving does). A bad
        config (``core.model_config_list``; a shard outside --num_ps) is refused before anything changes."""
        configs = sub_models_from_proto(reload_request_config(request))
        check_partitions(configs, self._core.num_ps)
        check_reload(configs, self._core.versions)
        await self._apply_config(configs)
        return model_management_pb2.ReloadConfigResponse()
