"""The client's calls (predict, status, meta, load, profile) and how each prints its answer.

Output is ours (``text``), JSON (``json``), or the response as tfs_client prints it (``tfs_client``: protobuf text
format; profile's ``[Profile] Count: ...`` line). A failed RPC raises ``grpc.aio.AioRpcError``; an answer that
reports a failure of its own (a reload's response status, a load test's failed requests) ServerReportedError,
after the answer is printed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import json_format, text_format

from monolith_serving.client.call_inputs import CallInputs
from monolith_serving.client.profile import ProfileResult, run_profile
from monolith_serving.client.settings import Settings
from monolith_serving.core.errors import MonolithServingError
from monolith_serving.core.grpc_server import channel_options
from monolith_serving.core.predict_signature import DEFAULT_SIGNATURE
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.core.tls_channel import aio_channel
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

PS_VERSIONS_KEY = "x-monolith-ps-versions"


class ServerReportedError(MonolithServingError):
    """The RPCs succeeded but the answer reports a failure: a reload's response status, a load test's failed
    requests."""


def _bytes_as_text(value: Any) -> str:
    """``json.dumps`` fallback for DT_STRING outputs (bytes); anything else is a bug and stays a TypeError."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _print(settings: Settings, payload: dict[str, Any], text: str, response: Any) -> None:
    """``text`` (ours), ``payload`` as JSON, or ``response`` as tfs_client prints it (``print(response)``; a
    Predict prints its own, before decoding anything)."""
    if settings.output == "json":
        print(json.dumps(payload, indent=2, default=_bytes_as_text))
    elif settings.output == "tfs_client":
        print(text_format.MessageToString(response))
    else:
        print(text)


def _rounded(values: npt.NDArray[Any]) -> Any:
    """Floats to 6 decimals for reading; other dtypes (ints, bools, DT_STRING bytes) as they are."""
    # Rounded as float64: a float32 rounded to 6 decimals prints as 0.5168889760971069 once it is a Python float.
    shown = values.astype(np.float64).round(6) if np.issubdtype(values.dtype, np.floating) else values
    return shown.tolist()  # nested lists, or one value for a scalar output


def _model_spec(settings: Settings, message: Any) -> None:
    """Name, version and (as tfs_client sends it) signature of a status or metadata request."""
    message.model_spec.name = settings.model
    message.model_spec.signature_name = settings.signature_name or DEFAULT_SIGNATURE
    if settings.version is not None:
        message.model_spec.version.value = settings.version


async def _predict(settings: Settings, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
    (request,) = inputs.requests
    call = stub.Predict(request, timeout=settings.timeout_s)
    response = await call
    if settings.output == "tfs_client":
        # As tfs_client prints it, whatever the outputs' dtypes: ours decode them, which a DT_BFLOAT16 one fails.
        print(text_format.MessageToString(response))
        return
    trailing = await call.trailing_metadata()
    ps_versions = dict(trailing or ()).get(PS_VERSIONS_KEY, "")
    arrays = {name: from_tensor_proto(t, name) for name, t in sorted(response.outputs.items())}  # a stable order
    version = response.model_spec.version.value
    lines = [f"model {response.model_spec.name} version {version}" + (f" (PS {ps_versions})" if ps_versions else "")]
    for name, values in arrays.items():
        lines.append(f"{name}: {_rounded(values)}")
    outputs = {name: values.tolist() for name, values in arrays.items()}
    payload = {"version": version, "ps_versions": ps_versions, "outputs": outputs}
    _print(settings, payload, "\n".join(lines), None)


async def _status(settings: Settings, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
    request = get_model_status_pb2.GetModelStatusRequest()
    _model_spec(settings, request)
    response = await stub.GetModelStatus(request, timeout=settings.non_predict_timeout_s)
    state = get_model_status_pb2.ModelVersionStatus.State
    lines = [
        f"version {s.version}: {state.Name(s.state)}"
        + (f" ({s.status.error_message})" if s.status.error_message else "")
        for s in response.model_version_status
    ]
    _print(settings, json_format.MessageToDict(response), "\n".join(lines) or "no versions", response)


async def _meta(settings: Settings, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=settings.metadata_fields)
    _model_spec(settings, request)
    response = await stub.GetModelMetadata(request, timeout=settings.non_predict_timeout_s)
    unpacked: dict[str, Any] = {}
    for name, packed in response.metadata.items():
        if packed.Is(get_model_metadata_pb2.SignatureDefMap.DESCRIPTOR):
            message: Any = get_model_metadata_pb2.SignatureDefMap()
            packed.Unpack(message)
            unpacked[name] = json_format.MessageToDict(message)
        else:
            unpacked[name] = json_format.MessageToDict(packed)
    payload = {"model_spec": json_format.MessageToDict(response.model_spec), "metadata": unpacked}
    # Ours prints the JSON in both the text and the json output.
    _print(settings, payload, json.dumps(payload, indent=2), response)


async def _load(settings: Settings, channel: grpc.aio.Channel, inputs: CallInputs) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]
    request = model_management_pb2.ReloadConfigRequest(config=inputs.model_config)
    response = await stub.HandleReloadConfigRequest(request, timeout=settings.non_predict_timeout_s)
    status = response.status
    if settings.output == "tfs_client":
        # tfs_client logs the config it sent, then " load done!".
        print(f"{text_format.MessageToString(request.config)} load done!")
    else:
        _print(settings, json_format.MessageToDict(response), f"reloaded: status code {status.error_code}", response)
    if status.error_code != 0:  # error.Code OK
        # TF Serving reports a refused config in the response as well as in the RPC status; trust either.
        raise ServerReportedError(f"{_code_name(status.error_code)}: {status.error_message}")


def _code_name(code: int) -> str:
    """``error.Code`` numbers are gRPC's status codes."""
    for status_code in grpc.StatusCode:
        if status_code.value[0] == code:
            return str(status_code.name)
    return f"error code {code}"


def _profile_text(settings: Settings, result: ProfileResult) -> str:
    if settings.output == "tfs_client":
        return (
            f"[Profile] Count: {result.count}, Avg Latency: {result.mean_ms}, P99 Latency: {result.p99_ms}, "
            f"QPS: {result.qps}"
        )
    return (
        f"count {result.count}  errors {result.errors}  mean {result.mean_ms:.3f} ms  p50 {result.p50_ms:.3f} ms  "
        f"p99 {result.p99_ms:.3f} ms  QPS {result.qps:.1f}"
        + (f"\nfirst error: {result.first_error}" if result.first_error else "")
    )


def profile_failure(result: ProfileResult) -> str | None:
    """The ``error:`` line of a load test in which any request failed; None when every request succeeded."""
    if not result.errors:
        return None
    return f"{result.first_error} ({result.errors} of {result.count + result.errors} requests failed)"


async def _profile(settings: Settings, inputs: CallInputs) -> None:
    """Prints the whole summary, then raises ServerReportedError when any request failed."""

    def progress(elapsed_s: float, count: int, errors: int) -> None:
        print(
            f"\r{elapsed_s:5.1f}s  {count} ok  {errors} errors  {count / max(elapsed_s, 1e-9):.0f} QPS",
            end="",
            file=sys.stderr,
        )

    result = await run_profile(
        targets=settings.targets,
        tls=settings.tls,
        requests=inputs.requests,
        workers=settings.workers,
        duration_s=settings.duration_s,
        timeout_s=settings.timeout_s,
        progress=progress,
    )
    print(file=sys.stderr)
    if settings.output == "json":
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(_profile_text(settings, result))
    failure = profile_failure(result)
    if failure is not None:
        raise ServerReportedError(failure)


async def call(settings: Settings, inputs: CallInputs) -> None:
    """Runs the action of ``settings`` with what ``inputs`` read, printing its answer."""
    if settings.action == "profile":
        await _profile(settings, inputs)
        return
    # As tfs_client: one call goes to the first of several targets.
    async with aio_channel(settings.targets[0], settings.tls, channel_options()) as channel:
        handlers = {"predict": _predict, "status": _status, "meta": _meta, "load": _load}
        await handlers[settings.action](settings, channel, inputs)
