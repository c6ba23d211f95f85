"""TF Serving's REST API on an HTTP port, translated into the same core calls as gRPC.

Why aiohttp: it runs on the proxy's event loop (uvloop) next to grpc.aio, and it gets HTTP/1.1 right
(keep-alive, chunked bodies, size limits, slow clients) where a hand-written parser on asyncio streams
would be new code to trust in front of every client.

Routes (``{name}`` may contain ``:``, e.g. ``model:entry``):
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict   → PredictionService/Predict
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]           → ModelService/GetModelStatus
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata  → PredictionService/GetModelMetadata
Errors are the HTTP status of the gRPC code with ``{"error": "<message>"}`` (413 for a body over the limit).
Each request has one deadline, fixed when it arrives; its core calls (GetModelMetadata on a signature-cache
miss, then Predict) share it, and so does decoding its body.
A Predict body of ``RestConfig.decode_offload_bytes`` or more is decoded (JSON → PredictRequest bytes) on a small
thread pool, not on the event loop that serves every gRPC and REST client.
Every request is counted once in ``proxy_requests_total`` under the method it asks for: by the core when it
reaches a core call of that method, else here (``ProxyCore.count_refused``) with the code its answer means.
A signature lookup is a core call of its own, counted as GetModelMetadata.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aiohttp import web

from monolith_serving.core.aio_wait import within
from monolith_serving.core.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    MonolithServingError,
    NotFoundError,
)
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.grpc_server import MAX_MESSAGE_BYTES
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)
from monolith_serving.proxy.core import (
    GET_MODEL_STATUS,
    PREDICTION_SERVICE,
    REQUEST_ID_KEY,
    CallContext,
    ProxyCore,
    method_name,
)
from monolith_serving.proxy.metrics import UNKNOWN_METHOD
from monolith_serving.proxy.rest_codec import (
    SIGNATURE_DEF_FIELD,
    ModelRef,
    PredictBody,
    build_predict_request,
    model_metadata_json,
    model_status_json,
    parse_predict_body,
    predict_response_json,
    signature_inputs_from_metadata,
)
from monolith_serving.proxy.upstream import RpcStatusError, UpstreamReply

log = logging.getLogger(__name__)

T = TypeVar("T")

PREDICT = f"/{PREDICTION_SERVICE}/Predict"
GET_MODEL_METADATA = f"/{PREDICTION_SERVICE}/GetModelMetadata"

_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
}
# Upstream answers that mean "this entry cannot describe its signature": fall back to JSON types.
_NO_METADATA = frozenset(
    {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
)
MAX_VERSION = 2**63 - 1  # ModelSpec.version is an Int64Value
PROTOCOL = "rest"  # the ``protocol`` label of REST requests
# POST verbs → the gRPC method they name (classify and regress are answered UNIMPLEMENTED here).
_VERB_METHODS = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


@dataclass(frozen=True, kw_only=True)
class RestConfig:
    host: str = "0.0.0.0"
    port: int = 0
    timeout_s: float = 30.0  # TF Serving's rest_api_timeout_in_ms default
    max_body_bytes: int = MAX_MESSAGE_BYTES
    signature_ttl_s: float = 30.0
    drain_timeout_s: float = 30.0  # how long stop() waits for requests in flight
    # Predict bodies this large or larger are decoded on ``decode_threads`` threads, off the event loop. Numbers
    # decode at ~60 ns/byte, so a 16 KiB body holds the loop ~1 ms, while the hop to a thread and back costs
    # ~30 us (3%); base64 strings decode ~15x faster, and the hop stays negligible in absolute terms.
    decode_offload_bytes: int = 16 << 10
    # Decoding holds the GIL, so more threads add no throughput; two keep one huge body from queueing every
    # other large one behind it. A queued decode still counts against its request's deadline.
    decode_threads: int = 2


class _BadPath(InvalidArgumentError):
    """A malformed request path: 400, counted INVALID_ARGUMENT."""


class _MethodNotAllowed(InvalidArgumentError):
    """An HTTP method the path does not take: 405, counted INVALID_ARGUMENT (the caller's mistake)."""


@dataclass
class _RestCall:
    """One REST request as its core calls see it, and what the gateway needs to count it when no core call
    of its own method does. Owned by one handler."""

    request_id: str
    deadline: float  # on the gateway's clock, fixed when the request arrived
    method: str = UNKNOWN_METHOD  # the gRPC method the path asks for, once read from it
    model: str | None = None  # the model name in the path, once read (not yet vouched for: not a label)
    counted: bool = False  # a core call of ``method`` ran: the core counted the request


def parse_version(text: str) -> int:
    """A version path segment: ASCII digits only (``str.isdigit`` also takes '²') and within int64."""
    if not (text.isascii() and text.isdigit()):
        raise _BadPath(f"version must be a non-negative integer, got {text!r}")
    version = int(text)
    if version > MAX_VERSION:
        raise _BadPath(f"version {text} is out of range (at most {MAX_VERSION})")
    return version


def parse_model_path(tail: str) -> tuple[ModelRef, str]:
    """``name[/versions/v|/labels/l][/metadata]`` → (ModelRef, trailing word: "" or "metadata")."""
    parts = tail.split("/")
    name, rest = parts[0], parts[1:]
    if not name:
        raise NotFoundError("missing model name in the path")
    suffix = ""
    if rest and rest[-1] == "metadata":
        suffix, rest = "metadata", rest[:-1]
    if not rest:
        return ModelRef(name=name), suffix
    if len(rest) == 2 and rest[0] == "versions":
        return ModelRef(name=name, version=parse_version(rest[1])), suffix
    if len(rest) == 2 and rest[0] == "labels" and rest[1]:
        return ModelRef(name=name, label=rest[1]), suffix
    raise _BadPath(f"malformed request path /v1/models/{tail}")


class _SignatureCache:
    """Input dtypes per (model, version, label, signature), kept ``ttl_s``; None = entry cannot tell."""

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[tuple[str, int | None, str | None, str], tuple[float, dict[str, int] | None]] = {}

    def get(self, key: tuple[str, int | None, str | None, str]) -> tuple[bool, dict[str, int] | None]:
        found = self._entries.get(key)
        if found is None or found[0] < self._clock():
            return False, None
        return True, found[1]

    def put(self, key: tuple[str, int | None, str | None, str], value: dict[str, int] | None) -> None:
        if len(self._entries) > 10_000:  # bounded: names come from clients
            self._entries.clear()
        self._entries[key] = (self._clock() + self._ttl_s, value)


class RestGateway:
    """``start()`` binds and serves; ``stop()`` stops accepting and waits for in-flight requests."""

    def __init__(self, core: ProxyCore, config: RestConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._core = core
        self._config = config
        self._clock = clock
        self._signatures = _SignatureCache(config.signature_ttl_s, clock)
        self._runner: web.AppRunner | None = None
        self._decoder: ThreadPoolExecutor | None = None
        self.port: int | None = None

    async def start(self) -> int:
        if self._runner is not None and self.port is not None:
            return self.port
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(self._config.decode_threads, thread_name_prefix="rest-decode")
        app = web.Application(client_max_size=self._config.max_body_bytes)
        app.router.add_route("*", "/v1/models/{tail:.+}", self._dispatch)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self._config.drain_timeout_s
        )
        await runner.setup()
        site = web.TCPSite(runner, self._config.host, self._config.port)
        await site.start()
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1])
        log.info("REST API on http://%s:%d/v1/models/...", self._config.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Idempotent. Closing the sites stops accepting; cleanup() then waits up to drain_timeout_s for
        the handlers in flight."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            # Still running here: only decodes whose requests were answered (deadline passed) or abandoned.
            decoder.shutdown(wait=False, cancel_futures=True)

    # ---- handlers ------------------------------------------------------------------------------------------
    async def _not_found(self, request: web.Request) -> web.Response:
        self._core.count_refused(model=None, method=UNKNOWN_METHOD, protocol=PROTOCOL, code=grpc.StatusCode.NOT_FOUND)
        return _error(404, f"no such endpoint: {request.method} {request.path}")

    async def _dispatch(self, request: web.Request) -> web.Response:
        request_id = request.headers.get(REQUEST_ID_KEY) or uuid.uuid4().hex
        call = _RestCall(request_id, self._clock() + self._config.timeout_s)
        code = grpc.StatusCode.CANCELLED  # what the count says if the handler is cancelled (client gone)
        try:
            response = await self._route(request, call)
            code = grpc.StatusCode.OK
        except web.HTTPRequestEntityTooLarge:
            # Raised by aiohttp while reading the body; the client's mistake, not ours.
            code = grpc.StatusCode.INVALID_ARGUMENT
            response = _error(413, f"request body larger than {self._config.max_body_bytes} bytes")
        except _MethodNotAllowed as error:
            code = grpc.StatusCode.INVALID_ARGUMENT
            response = _error(405, error.message)
        except RpcStatusError as error:
            code = error.code
            response = _error(http_status(code), error.message)
        except MonolithServingError as error:
            code = status_code_for(error)
            response = _error(http_status(code), error.message)
        except Exception as error:
            # A bug, not bad input: keep serving, report it with its traceback.
            code = grpc.StatusCode.INTERNAL
            log.exception("request %s: unhandled error in REST %s %s", request_id, request.method, request.path)
            response = _error(500, f"internal error: {type(error).__name__}: {error}")
        finally:
            if not call.counted:
                # Answered before a core call of its own (bad path or body, body too large): the core never saw it.
                self._core.count_refused(model=call.model, method=call.method, protocol=PROTOCOL, code=code)
        response.headers[REQUEST_ID_KEY] = request_id
        return response

    async def _route(self, request: web.Request, call: _RestCall) -> web.Response:
        """Sets ``call.method`` and ``call.model`` as soon as the path tells them, before anything can refuse
        the request, so a refusal is counted under them."""
        tail = request.match_info["tail"]
        if request.method == "POST":
            resource, colon, verb = tail.rpartition(":")
            call.model = resource.split("/", 1)[0] or None
            call.method = _VERB_METHODS.get(verb, UNKNOWN_METHOD)
            if not colon or "/" in verb:
                raise _BadPath(f"malformed request: POST /v1/models/{tail} (expected ...:predict)")
            model, suffix = parse_model_path(resource)
            if suffix:
                raise _BadPath(f"malformed request: POST /v1/models/{tail}")
            if verb in ("classify", "regress"):
                raise RpcStatusError(
                    grpc.StatusCode.UNIMPLEMENTED, f"{verb} is not supported by Monolith entries; use :predict"
                )
            if verb != "predict":
                raise _BadPath(f"unknown method {verb!r} (expected predict)")
            return await self._predict(model, await request.read(), call)
        if request.method == "GET":
            call.model = tail.split("/", 1)[0] or None
            call.method = "GetModelMetadata" if tail.endswith("/metadata") else "GetModelStatus"
            model, suffix = parse_model_path(tail)
            if suffix == "metadata":
                return await self._metadata(model, call)
            return await self._status(model, call)
        raise _MethodNotAllowed(f"method {request.method} not allowed")

    async def _call_core(self, path: str, request: bytes, call: _RestCall) -> UpstreamReply:
        """One core call given only what is left of the request's deadline (none left: the core answers
        DEADLINE_EXCEEDED, counted like any other failure). The core counts the call, so a call of the
        request's own method marks the request counted."""
        if method_name(path) == call.method:
            call.counted = True
        timeout_s = max(call.deadline - self._clock(), 0.0)
        return await self._core.call(
            path, request, CallContext(request_id=call.request_id, timeout_s=timeout_s, protocol=PROTOCOL)
        )

    async def _decode(self, call: _RestCall, body_bytes: int, work: Callable[[], T]) -> T:
        """``work()``, a step of decoding a ``body_bytes`` body: on a decode thread if the body is large.

        The codec keeps each C-level call short, so the thread lets the event loop run every few ms (the GIL's
        switch interval). A step is bounded by what is left of the request's deadline: past it the request is
        answered DEADLINE_EXCEEDED at once.
        """
        decoder = self._decoder
        if decoder is None or not self._offloads(body_bytes):
            return work()
        remaining_s = max(call.deadline - self._clock(), 0.0)
        try:
            return await within(asyncio.get_running_loop().run_in_executor(decoder, work), remaining_s)
        except TimeoutError:
            # A running thread cannot be stopped: it finishes this step and its result is dropped (a step still
            # queued is cancelled and never runs). Only the thread's time is lost, not the client's.
            log.warning("request %s: deadline passed while decoding its %d-byte REST body", call.request_id, body_bytes)
            raise DeadlineExceededError(
                f"the deadline passed while decoding the {body_bytes}-byte request body"
            ) from None

    def _offloads(self, body_bytes: int) -> bool:
        return body_bytes >= self._config.decode_offload_bytes and self._decoder is not None

    async def _predict(self, model: ModelRef, body: bytes, call: _RestCall) -> web.Response:
        size = len(body)
        parse = functools.partial(parse_predict_body, body, on_thread=self._offloads(size))
        parsed = await self._decode(call, size, parse)
        signature_inputs = await self._signature_inputs(model, parsed.signature_name, call)
        request = await self._decode(
            call, size, functools.partial(_encode_predict_request, model, parsed, signature_inputs)
        )
        reply = await self._call_core(PREDICT, request, call)
        response = predict_pb2.PredictResponse.FromString(reply.response)
        return _json(200, predict_response_json(response, parsed.row_format))

    async def _signature_inputs(self, model: ModelRef, signature: str, call: _RestCall) -> dict[str, int] | None:
        key = (model.name, model.version, model.label, signature)
        cached, value = self._signatures.get(key)
        if cached:
            return value
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model.to_spec(), metadata_field=[SIGNATURE_DEF_FIELD]
        )
        try:
            reply = await self._call_core(GET_MODEL_METADATA, request.SerializeToString(), call)
        except RpcStatusError as error:
            if error.code not in _NO_METADATA:
                raise
            log.info("model %s gives no signature metadata (%s); typing inputs from JSON", model.name, error.code.name)
            value = None
        else:
            metadata = get_model_metadata_pb2.GetModelMetadataResponse.FromString(reply.response)
            value = signature_inputs_from_metadata(metadata, signature)
        self._signatures.put(key, value)
        return value

    async def _status(self, model: ModelRef, call: _RestCall) -> web.Response:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=model.to_spec())
        reply = await self._call_core(GET_MODEL_STATUS, request.SerializeToString(), call)
        return _json(200, model_status_json(get_model_status_pb2.GetModelStatusResponse.FromString(reply.response)))

    async def _metadata(self, model: ModelRef, call: _RestCall) -> web.Response:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model.to_spec(), metadata_field=[SIGNATURE_DEF_FIELD]
        )
        reply = await self._call_core(GET_MODEL_METADATA, request.SerializeToString(), call)
        response = get_model_metadata_pb2.GetModelMetadataResponse.FromString(reply.response)
        return _json(200, model_metadata_json(response))


def _encode_predict_request(model: ModelRef, body: PredictBody, signature_inputs: dict[str, int] | None) -> bytes:
    return build_predict_request(model, body, signature_inputs).SerializeToString()


def _json(status: int, document: Any) -> web.Response:
    return web.Response(status=status, text=json.dumps(document), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"error": message})
