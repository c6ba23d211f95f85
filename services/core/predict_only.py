"""PredictionService's other methods, for servers whose models have predict signatures only.

A Monolith model exports predict signatures alone, and tensorflow_model_server answers Classify, Regress or
MultiInference on such a model as it answers any request for a signature the model does not have: NOT_FOUND when
the model (or the version or label asked for) is not served, else INVALID_ARGUMENT. Our servers answer the same, so
a TF Serving client sees the codes it knows (not UNIMPLEMENTED, which says the server lacks the method) and the
error ratios, which leave the caller's codes out, do not count a client's wrong call as a server failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, NoReturn

import grpc

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.predict_signature import DEFAULT_SIGNATURE
from monolith_serving.proto_gen.tensorflow_serving.apis import classification_pb2, model_pb2


class PredictOnly:
    """Mixed in before the generated ``PredictionServiceServicer``; ``server_name`` says which server answers, and
    ``resolve_model`` raises what the server's Predict raises for a model it does not serve."""

    server_name: ClassVar[str]

    def resolve_model(self, spec: model_pb2.ModelSpec) -> None:
        """Raises NotFoundError (or InvalidArgumentError for a malformed spec) unless ``spec`` names a model, and a
        version of it, that this server serves, as its Predict would."""
        raise NotImplementedError

    def _refuse(self, method: str, kind: str, specs: Sequence[model_pb2.ModelSpec]) -> NoReturn:
        for spec in specs:
            self.resolve_model(spec)
        spec = specs[0]
        signature = spec.signature_name or DEFAULT_SIGNATURE
        raise InvalidArgumentError(
            f"{method}: model {spec.name!r} has no {kind} signature {signature!r}: {self.server_name} serves "
            "predict signatures only (use Predict)"
        )

    async def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        self._refuse("Classify", "classification", (request.model_spec,))

    async def Regress(
        self, request: classification_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.RegressionResponse:
        self._refuse("Regress", "regression", (request.model_spec,))

    async def MultiInference(
        self, request: classification_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.MultiInferenceResponse:
        if not request.tasks:
            raise InvalidArgumentError("MultiInference: tasks is empty (give at least one task)")
        self._refuse("MultiInference", "classification or regression", [task.model_spec for task in request.tasks])
