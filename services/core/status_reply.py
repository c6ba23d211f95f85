"""A GetModelStatus reply from per-version states: the PS and dense servers' ``core.version_lifecycle`` servables
and the entry's version statuses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from monolith_serving.core.errors import MonolithServingError
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.model_state import ModelState
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2


class VersionState(Protocol):
    """What a GetModelStatus reply shows of one version."""

    @property
    def version(self) -> int: ...

    @property
    def state(self) -> ModelState: ...

    @property
    def error(self) -> MonolithServingError | None: ...


def model_status_reply(
    versions: Iterable[VersionState], details: Mapping[int, str] | None = None
) -> get_model_status_pb2.GetModelStatusResponse:
    """One ModelVersionStatus per version, in the given order. A failed load carries its error's code and text;
    ``details[version]`` (what a version waits for, say) follows the error in brackets, or stands alone as the
    message of a version without one."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for item in versions:
        status = response.model_version_status.add(version=item.version, state=int(item.state))
        # Always present, OK included, as TF Serving sends it: REST clients read status.error_code.
        status.status.SetInParent()
        detail = details.get(item.version, "") if details else ""
        if item.error is not None:
            status.status.error_code = status_code_for(item.error).value[0]
            status.status.error_message = f"{item.error.message} ({detail})" if detail else item.error.message
        elif detail:
            status.status.error_message = detail
    return response
