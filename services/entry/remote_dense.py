"""The dense network in a separate server (Monolith's ``dense_alone``): ``RemoteDense`` calls it.

An entry version whose serving spec says ``"dense": {"backend": "remote", "sub_model": "dense_0"}`` gets a
``RemoteDense`` instead of a local network. After pooling, ``score`` sends one ``Predict`` (model
``dense_0`` or ``<model>:dense_0``, signature ``dense``, input ``dense_input`` [batch, width] DT_FLOAT,
``model_spec.version`` = the entry version) with the PS calls' rules:
- the deadline is what is left of the request's (``EntryModel`` passes it); it is split over the attempts
  still allowed (``ps_client.split_deadline``), never below ``RetryPolicy.min_attempt_s``;
- on UNAVAILABLE, DEADLINE_EXCEEDED or NOT_FOUND (that replica lacks the version) the next replica is
  tried, at most ``retry`` times; replicas known to hold the version and not failing lately go first;
- one channel per replica address, opened once (``ChannelPool``); when no replica answers in time the
  request fails UNAVAILABLE naming ``dense_0`` and the last error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from monolith_serving.core.errors import UnavailableError
from monolith_serving.core.serving_spec import DENSE_SUB_MODEL, ServingSpec
from monolith_serving.core.tensor_codec import TensorCodecError, from_tensor_proto, to_tensor_proto
from monolith_serving.entry.dense import DenseModel, Float32Array
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.ps_client import (
    AttemptMetrics,
    ChannelPool,
    ReplicaHealth,
    ReplicaOrder,
    ReplicasExhausted,
    RetryPolicy,
    VersionKnowledge,
    call_with_retries,
)
from monolith_serving.entry.replica_source import ReplicaSource
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2

DENSE_SIGNATURE = "dense"
DENSE_INPUT = "dense_input"


def dense_model_name(entry_model_name: str, index: int = 0) -> str:
    """``dense_0``, or ``<model>:dense_0`` when the entry is named ``<model>:entry`` (agent v3)."""
    model, sep, _ = entry_model_name.rpartition(":")
    return f"{model}:dense_{index}" if sep else f"dense_{index}"


@dataclass(frozen=True)
class RemoteDenseConfig:
    entry_model_name: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # the PS calls' (fetch_ps_retry, fetch_ps_timeout_ms)


class DenseReplicas:
    """What every ``RemoteDense`` of one entry shares: replicas, channels, health, version knowledge."""

    def __init__(
        self,
        *,
        config: RemoteDenseConfig,
        replicas: ReplicaSource,
        channels: ChannelPool,
        metrics: EntryMetrics,
        health: ReplicaHealth | None = None,
        knows_version: VersionKnowledge | None = None,
    ) -> None:
        self.config = config
        self.replicas = replicas
        self.channels = channels
        self.metrics = metrics
        self.health = health if health is not None else ReplicaHealth()
        self.model_name = dense_model_name(config.entry_model_name)
        self._order = ReplicaOrder(self.health, knows_version)
        self.attempt_metrics = AttemptMetrics(
            retries=metrics.dense_retries, errors=metrics.dense_errors.labels, latency=metrics.dense_latency
        )

    def ordered(self, version: int) -> list[str]:
        return self._order.order(self.replicas.replicas(0), version)

    def bind(self, spec: ServingSpec) -> RemoteDense:
        """The dense network of one entry version (``EntryModel``'s remote factory)."""
        return RemoteDense(self, input_width=spec.input_width, output_name=spec.output_name)


class RemoteDense(DenseModel):
    def __init__(self, shared: DenseReplicas, *, input_width: int, output_name: str) -> None:
        self._shared = shared
        self._output_name = output_name
        self.input_width = input_width
        self.output_width = -1  # known from the first answer; GetModelMetadata shows -1 until then

    def _request(self, x: Float32Array, version: int) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self._shared.model_name
        request.model_spec.version.value = version
        request.model_spec.signature_name = DENSE_SIGNATURE
        request.inputs[DENSE_INPUT].CopyFrom(to_tensor_proto(np.ascontiguousarray(x, dtype=np.float32)))
        request.output_filter.append(self._output_name)
        return request

    async def score(self, x: Float32Array, *, version: int, timeout_s: float) -> Float32Array:
        shared = self._shared
        name = shared.model_name
        deadline = time.monotonic() + timeout_s
        addresses = shared.ordered(version)
        if not addresses:
            raise UnavailableError(f"dense sub-model {name} has no known replica")
        request = self._request(x, version)
        try:
            response = await call_with_retries(
                addresses,
                lambda address, timeout: shared.channels.predict(address)(request, timeout=timeout),
                deadline=deadline,
                policy=shared.config.retry,
                health=shared.health,
                metrics=shared.attempt_metrics,
            )
        except ReplicasExhausted as error:
            raise error.as_error(f"dense sub-model {name} version {version} failed: {error.last_error}") from None
        return self._decode(response, len(x), version)

    def _decode(self, response: predict_pb2.PredictResponse, batch: int, version: int) -> Float32Array:
        name = self._shared.model_name
        if self._output_name not in response.outputs:
            raise UnavailableError(f"{name} version {version} answered without output {self._output_name!r}")
        try:
            array = from_tensor_proto(response.outputs[self._output_name], self._output_name)
        except TensorCodecError as error:
            raise UnavailableError(f"{name}: bad output {self._output_name!r}: {error.message}") from error
        if array.ndim != 2 or array.shape[0] != batch:
            raise UnavailableError(
                f"{name}: output {self._output_name!r} has shape {list(array.shape)}, expected [{batch}, k]"
            )
        self.output_width = int(array.shape[1])
        scores: Float32Array = array.astype(np.float32, copy=False)
        return scores


__all__ = [
    "DENSE_INPUT",
    "DENSE_SIGNATURE",
    "DENSE_SUB_MODEL",
    "DenseReplicas",
    "RemoteDense",
    "RemoteDenseConfig",
    "dense_model_name",
]
