"""core.status_reply: the GetModelStatus reply every server (PS, dense, entry) builds."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError
from monolith_serving.core.model_state import ModelState
from monolith_serving.core.rest_codec import model_status_json
from monolith_serving.core.status_reply import model_status_reply


@dataclass
class _Version:
    version: int
    state: ModelState
    error: MonolithServingError | None = None


def test_states_errors_and_details_in_the_given_order() -> None:
    bad = InvalidArgumentError("bad dump")
    reply = model_status_reply(
        [
            _Version(3, ModelState.LOADING),
            _Version(2, ModelState.AVAILABLE),
            _Version(1, ModelState.END, bad),
            _Version(0, ModelState.END, bad),
        ],
        {3: "waiting for the PS", 1: "attempt 5 of 5"},
    )
    rows = [(s.version, s.state, s.status.error_code, s.status.error_message) for s in reply.model_version_status]
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert rows == [
        (3, ModelState.LOADING, 0, "waiting for the PS"),
        (2, ModelState.AVAILABLE, 0, ""),
        (1, ModelState.END, invalid, "bad dump (attempt 5 of 5)"),
        (0, ModelState.END, invalid, "bad dump"),
    ]


def test_without_details_a_reply_shows_states_and_errors_only() -> None:
    reply = model_status_reply([_Version(7, ModelState.UNLOADING)])
    assert [(s.version, s.state, s.status.error_message) for s in reply.model_version_status] == [
        (7, ModelState.UNLOADING, "")
    ]


def test_every_version_carries_a_status_ok_included_as_tf_serving_sends_it() -> None:
    """TF Serving always sets ModelVersionStatus.status; its REST API then shows ``"status": {"error_code": "OK",
    "error_message": ""}``, which clients read. An unset message would vanish from that JSON."""
    reply = model_status_reply([_Version(2, ModelState.AVAILABLE)])
    assert reply.model_version_status[0].HasField("status")
    assert model_status_json(reply) == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
