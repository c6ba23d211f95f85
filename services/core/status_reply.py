"""A GetModelStatus reply from the versions a ``core.version_lifecycle`` holds (PS and dense server)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.version_lifecycle import Servable
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2


def model_status_reply(versions: Iterable[Servable[Any, Any]]) -> get_model_status_pb2.GetModelStatusResponse:
    """One ModelVersionStatus per version, in the given order; a failed load carries its error's code and text."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for servable in versions:
        item = response.model_version_status.add(version=servable.version, state=int(servable.state))
        if servable.error is not None:
            item.status.error_code = status_code_for(servable.error).value[0]
            item.status.error_message = servable.error.message
    return response
