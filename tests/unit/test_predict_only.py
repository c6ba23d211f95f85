"""core.predict_only: every Monolith server refuses Classify, Regress and MultiInference, naming itself."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from monolith_serving.core.predict_only import PredictOnly
from monolith_serving.dense.servicer import DensePredictionServicer
from monolith_serving.entry.servicer import EntryPredictionServicer
from monolith_serving.ps.servicer import PsPredictionServicer
from monolith_serving.unified.servicer import UnifiedPredictionServicer


class Aborted(Exception):
    """What RecordingContext.abort raises, as grpc.aio's abort raises AbortError."""


class RecordingContext:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted  # as grpc.aio's abort does, it never returns


@pytest.mark.parametrize(
    ("servicer_class", "name"),
    [
        (EntryPredictionServicer, "the entry"),
        (PsPredictionServicer, "a PS"),
        (DensePredictionServicer, "the dense server"),
        (UnifiedPredictionServicer, "a unified server"),
    ],
)
def test_each_server_refuses_the_other_inference_methods(servicer_class: type[PredictOnly], name: str) -> None:
    servicer = servicer_class.__new__(servicer_class)  # the refusals use no state of the servicer
    for method in ("Classify", "Regress", "MultiInference"):
        context = RecordingContext()
        with pytest.raises(Aborted):
            asyncio.run(getattr(servicer, method)(object(), context))
        assert context.aborted == (grpc.StatusCode.UNIMPLEMENTED, f"{method}: {name} serves Predict only")
