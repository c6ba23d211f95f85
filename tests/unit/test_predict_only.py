"""core.predict_only: Classify, Regress and MultiInference are answered as tensorflow_model_server answers them on a
model with predict signatures only: NOT_FOUND for a model or version the server does not serve, else
INVALID_ARGUMENT naming the method, the model and the signature."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.predict_only import PredictOnly
from monolith_serving.dense.servicer import DensePredictionServicer
from monolith_serving.entry.servicer import EntryPredictionServicer
from monolith_serving.proto_gen.tensorflow_serving.apis import classification_pb2, model_pb2
from monolith_serving.ps.servicer import PsPredictionServicer
from monolith_serving.unified.servicer import UnifiedPredictionServicer


class Serving(PredictOnly):
    """Serves model "m" at version 3 only; records each spec it was asked to resolve."""

    server_name = "the test server"

    def __init__(self) -> None:
        self.resolved: list[str] = []

    def resolve_model(self, spec: model_pb2.ModelSpec) -> None:
        self.resolved.append(spec.name)
        if spec.name != "m":
            raise NotFoundError(f"model {spec.name!r} is not served")
        if spec.HasField("version") and spec.version.value != 3:
            raise NotFoundError(f"version {spec.version.value} is not served")


def call(servicer: PredictOnly, method: str, request: Any) -> None:
    asyncio.run(getattr(servicer, method)(request, None))


def spec(name: str, *, version: int | None = None, signature: str = "") -> model_pb2.ModelSpec:
    result = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        result.version.value = version
    return result


@pytest.mark.parametrize(
    ("method", "request_class", "kind"),
    [
        ("Classify", classification_pb2.ClassificationRequest, "classification"),
        ("Regress", classification_pb2.RegressionRequest, "regression"),
    ],
)
def test_a_served_model_is_invalid_argument_and_an_unknown_one_not_found(
    method: str, request_class: Any, kind: str
) -> None:
    servicer = Serving()
    with pytest.raises(InvalidArgumentError) as refused:
        call(servicer, method, request_class(model_spec=spec("m")))
    assert refused.value.message == (
        f"{method}: model 'm' has no {kind} signature 'serving_default': the test server serves predict "
        "signatures only (use Predict)"
    )
    with pytest.raises(InvalidArgumentError, match=f"no {kind} signature 'mine'"):
        call(servicer, method, request_class(model_spec=spec("m", version=3, signature="mine")))
    with pytest.raises(NotFoundError, match="model 'other' is not served"):
        call(servicer, method, request_class(model_spec=spec("other")))
    with pytest.raises(NotFoundError, match="version 9"):
        call(servicer, method, request_class(model_spec=spec("m", version=9)))


def test_multi_inference_resolves_every_task_first() -> None:
    servicer = Serving()
    request = classification_pb2.MultiInferenceRequest()
    request.tasks.add(model_spec=spec("m"))
    request.tasks.add(model_spec=spec("gone"))
    with pytest.raises(NotFoundError, match="gone"):
        call(servicer, "MultiInference", request)
    assert servicer.resolved == ["m", "gone"]
    del request.tasks[1]
    with pytest.raises(InvalidArgumentError, match="MultiInference: model 'm' has no classification or regression"):
        call(servicer, "MultiInference", request)
    with pytest.raises(InvalidArgumentError, match="tasks is empty"):
        call(servicer, "MultiInference", classification_pb2.MultiInferenceRequest())


@pytest.mark.parametrize(
    "servicer_class",
    [EntryPredictionServicer, PsPredictionServicer, DensePredictionServicer, UnifiedPredictionServicer],
)
def test_every_server_resolves_models_as_its_predict_does(servicer_class: type[PredictOnly]) -> None:
    """The behaviour against real models is in the integration tests (test_entry_rest_procs.py)."""
    assert servicer_class.resolve_model is not PredictOnly.resolve_model
