"""The unified server's gRPC face: PredictionService and ModelService dispatching by model name.

``<model>:ps_<i>`` goes to the PS servicer, ``<model>:dense_<i>`` to the dense servicer, ``<model>:entry`` to
the current entry servicer (``routing.side_of``); each keeps its own behaviour, including the PS Predict
answering with pre-serialized bytes (register this servicer with ``ps.servicer.add_prediction_servicer``).
HandleReloadConfigRequest is answered here: the whole config goes to ``apply_config``, which splits it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from monolith_serving.core.errors import NotFoundError
from monolith_serving.core.model_config_list import reload_request_config
from monolith_serving.core.predict_only import PredictOnly
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
from monolith_serving.unified.routing import HOSTED_SUB_GRAPHS, Side, side_of

__all__ = ["EntryServicers", "UnifiedModelServicer", "UnifiedPredictionServicer"]

T = TypeVar("T")
ApplyConfig = Callable[[model_server_config_pb2.ModelServerConfig], Awaitable[None]]


class EntryServicers(Protocol):
    """The entry servicers of the moment (they change when the entry model does); NotFoundError without one."""

    def prediction(self, name: str) -> prediction_service_pb2_grpc.PredictionServiceServicer: ...

    def model_servicer(self, name: str) -> model_service_pb2_grpc.ModelServiceServicer: ...


def _route(name: str, *, ps: T, dense: T, entry: Callable[[str], T]) -> T:
    """The servicer of the core serving ``name`` (the entry's is looked up: it changes with the entry model)."""
    side = side_of(name)
    if side is None:
        raise NotFoundError(f"model {name!r} is not served here (a unified server hosts {HOSTED_SUB_GRAPHS})")
    if side is Side.PS:
        return ps
    if side is Side.DENSE:
        return dense
    return entry(name)


class UnifiedPredictionServicer(PredictOnly, prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    server_name = "a unified server"

    def __init__(
        self,
        *,
        ps: prediction_service_pb2_grpc.PredictionServiceServicer,
        dense: prediction_service_pb2_grpc.PredictionServiceServicer,
        entry: EntryServicers,
    ) -> None:
        self._ps = ps
        self._dense = dense
        self._entry = entry

    def _target(self, name: str) -> Any:
        return _route(name, ps=self._ps, dense=self._dense, entry=self._entry.prediction)

    def resolve_model(self, spec: model_pb2.ModelSpec) -> None:
        self._target(spec.name).resolve_model(spec)

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse | bytes:
        response: predict_pb2.PredictResponse | bytes = await self._target(request.model_spec.name).Predict(
            request, context
        )
        return response

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        response: get_model_metadata_pb2.GetModelMetadataResponse = await self._target(
            request.model_spec.name
        ).GetModelMetadata(request, context)
        return response


class UnifiedModelServicer(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        ps: model_service_pb2_grpc.ModelServiceServicer,
        dense: model_service_pb2_grpc.ModelServiceServicer,
        entry: EntryServicers,
        apply_config: ApplyConfig,
    ) -> None:
        self._ps = ps
        self._dense = dense
        self._entry = entry
        self._apply_config = apply_config

    def _target(self, name: str) -> Any:
        return _route(name, ps=self._ps, dense=self._dense, entry=self._entry.model_servicer)

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        target = self._target(request.model_spec.name)
        response: get_model_status_pb2.GetModelStatusResponse = await target.GetModelStatus(request, context)
        return response

    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        """Returns once every core applied its part (TF Serving semantics)."""
        await self._apply_config(reload_request_config(request))
        return model_management_pb2.ReloadConfigResponse()
