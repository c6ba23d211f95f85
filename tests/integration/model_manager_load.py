"""Shared by the model-manager integration tests: writing demo versions into an export base, and a steady
Predict load that checks every response's entry version against the PS versions it used."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from monolith_serving.client.inputs import encode_instances, predict_request, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.proto_gen.tensorflow_serving.apis import prediction_service_pb2_grpc

ROWS = 50
PS_VERSIONS_KEY = "x-monolith-ps-versions"


def export_version(base: Path, version: int) -> None:
    """Writes version ``version`` of the demo (its own seed) so that it appears complete at once: the
    files go to a staging folder first and each sub-model folder is renamed into place."""
    staging = base.parent / f"staging-{version}"
    write_demo(DemoOptions(out=staging, num_ps=2, rows=ROWS, version=version, seed=version, files_per_partition=1))
    for sub_model in ("ps_0", "ps_1", "entry"):
        (base / sub_model).mkdir(parents=True, exist_ok=True)
        (staging / sub_model / str(version)).rename(base / sub_model / str(version))


@dataclass
class LoadResult:
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    mixed: list[str] = field(default_factory=list)
    versions: set[int] = field(default_factory=set)


class SteadyLoad:
    """One client thread sending Predict back to back, checking every response's versions."""

    def __init__(self, address: str, export: Path, model_name: str = "entry") -> None:
        spec = load_serving_spec(export / "entry" / "1")
        examples = random_examples(spec, 8, np.random.default_rng(3), rows=ROWS)
        self._request = predict_request(model_name, {"instances": encode_instances(spec, examples)})
        self._channel = grpc.insecure_channel(address)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._stop = threading.Event()
        self.result = LoadResult()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response, call = self._stub.Predict.with_call(self._request, timeout=10)
            except grpc.RpcError as error:
                self.result.errors.append(f"{error.code()}: {error.details()}")
                continue
            version = response.model_spec.version.value
            trailing = dict(call.trailing_metadata() or ())
            ps_versions = {pair.split("=")[1] for pair in str(trailing.get(PS_VERSIONS_KEY, "")).split(",") if pair}
            if not ps_versions or ps_versions != {str(version)}:
                self.result.mixed.append(f"entry {version}, ps {trailing.get(PS_VERSIONS_KEY)!r}")
            self.result.versions.add(version)
            self.result.ok += 1

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._channel.close()
