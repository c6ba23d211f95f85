"""Merging GetModelStatus answers of several entry replicas into one, as a single server would answer.

Per version the most useful state wins: AVAILABLE on any replica means the version can be served
through the proxy; otherwise the furthest-along state (START < LOADING < UNLOADING < END) is reported
with that replica's status. Versions are listed newest first.
"""

from __future__ import annotations

from collections.abc import Iterable

from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2

ModelVersionStatus = get_model_status_pb2.ModelVersionStatus
GetModelStatusResponse = get_model_status_pb2.GetModelStatusResponse


def _rank(state: int) -> int:
    # AVAILABLE outranks everything; the other states by their lifecycle order.
    return 1000 if state == ModelVersionStatus.AVAILABLE else state


def merge_model_status(responses: Iterable[GetModelStatusResponse]) -> GetModelStatusResponse:
    best: dict[int, ModelVersionStatus] = {}
    for response in responses:
        for status in response.model_version_status:
            current = best.get(status.version)
            if current is None or _rank(status.state) > _rank(current.state):
                best[status.version] = status
    merged = GetModelStatusResponse()
    for version in sorted(best, reverse=True):
        merged.model_version_status.add().CopyFrom(best[version])
    return merged
