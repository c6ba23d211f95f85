"""TF Serving's REST API on an HTTP port, translated into the same calls as gRPC and served by a backend.

The backend (:class:`RestBackend`) is what stands behind the gateway: the proxy's ``ProxyCore`` (routing to entry
replicas, its ``max_in_flight`` admission, ``proxy_*`` metrics), or a model server's
``core.model_server_rest.LocalRestBackend`` (the server's own gRPC handlers, called in its process). The gateway
itself knows neither.

Why aiohttp: it runs on the server's event loop (uvloop) next to grpc.aio, and it gets HTTP/1.1 right
(keep-alive, chunked bodies, size limits, slow clients) where a hand-written parser on asyncio streams
would be new code to trust in front of every client.

Routes, read from the raw path as TF Serving reads them (``parse_rest_target``; ``{name}`` may also contain ``:``,
e.g. ``model:entry``):
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict   → PredictionService/Predict
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]           → ModelService/GetModelStatus
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata  → PredictionService/GetModelMetadata
Any other path under /v1/ is TF Serving's 400 "Malformed request", one outside it a 404. Errors are the HTTP
status of the gRPC code with ``{"error": "<message>"}`` (413 for a body over the limit, 405 for a method other
than GET and POST).
With ``RestConfig.cors`` (``--rest_api_enable_cors_support``), as tensorflow_model_server does: every answer to a
path under /v1/ carries ``Access-Control-Allow-Origin: *``, ``Access-Control-Allow-Methods: POST, GET`` and
``Access-Control-Allow-Headers: Content-Type``, and OPTIONS there is a CORS preflight: 200 with an empty body when
its Origin header holds ``http://`` or ``https://``, else 400 (FAILED_PRECONDITION), counted under the method
``preflight``. Without it OPTIONS is 405 like any other method: TF Serving answers a preflight 200 even then, but
without the headers, which a browser refuses anyway.
With ``RestConfig.prometheus_path`` (``--monitoring_config_file``), GET of exactly that raw path answers the
server's Prometheus registry as its /metrics endpoint does (same registry, same format negotiation), written off
the event loop; it is not a REST API request: not counted, no CORS headers (as in TF Serving).
Each request has one deadline, fixed when it arrives; its core calls (GetModelMetadata on a signature-cache
miss, then Predict) share it, and so does decoding its body.

Backpressure, before any work: a request takes one admission slot of the backend (``RestBackend.admitted``; the
proxy's is the ``max_in_flight`` bound its gRPC path counts against) as soon as its path is read, before a byte of
its body, and holds it until it is answered; its core calls take no second slot. A Predict's body is then read only
as far as ``RestConfig.body_budget_bytes`` allows: the bytes of the bodies being read, decoded and forwarded at once
(decoded JSON takes ~10-25x its size in memory). A request that finds either full is refused at once, 429
(503 while draining), without its body being read.
A Predict body of ``RestConfig.decode_offload_bytes`` or more is decoded (JSON → PredictRequest bytes) on a small
thread pool, not on the event loop that serves every gRPC and REST client; at most ``decode_threads`` steps are
handed to it at once, so its queue stays empty and a request waiting for a thread holds no work item there. A step
the request stops waiting for (its deadline passed, or its handler was cancelled) is told to stop
(``rest_codec.DecodeCancel``), so it gives back its thread and its body's bytes within a few ms instead of
decoding on for nobody.
A Predict's answer is written (PredictResponse → JSON) on the same threads, within what is left of the same
deadline, when it has ``RestConfig.encode_offload_elements`` output elements or ``encode_offload_bytes`` bytes
or more (writing costs ~1-1.4 us per float or string: a 200k-float answer held the loop ~0.2-0.3 s). It first
takes its share of the byte budget (``rest_codec.AnswerSize.budget_bytes``, at most the whole budget: a larger
answer is written alone): the budget bounds the memory of REST work in flight, and writing takes ~100-175 bytes per
element, as much as decoding per byte of body; refused, it is 429. A small answer is written on the loop: ~0.35 ms
for 256 scores, against ~40 us for the hop to a thread, and only one such write runs at a time, so its memory needs
no bound of its own.
Every request is counted once by the backend (the proxy's ``proxy_requests_total``) under the method it asks for,
with the code its client gets: by the backend when a core call of that method fails; here when that call answers
OK (``RestBackend.call_deferring_count``: writing the answer can still fail, a 504, 429 or 400, and the request is
counted with that code) or when the request is answered before any such call (``RestBackend.count_refused``).
A signature lookup is an internal core call (``CallContext.internal``) made for the Predict: not a request of
its own, so not counted; the Predict is, once, whether it fails at its lookup or later.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from aiohttp import HttpVersion11, hdrs, web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from monolith_serving.core.aio_wait import within
from monolith_serving.core.byte_budget import ByteBudget
from monolith_serving.core.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    MonolithServingError,
    ResourceExhaustedError,
    UnavailableError,
)
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.core.log_limit import RateLimitedLog
from monolith_serving.core.rest_codec import (
    SIGNATURE_DEF_FIELD,
    AnswerSize,
    DecodeCancel,
    ModelRef,
    PredictBody,
    answer_size,
    build_predict_request,
    model_metadata_json,
    model_status_json,
    parse_predict_body,
    predict_response_text,
    signature_inputs_from_metadata,
)
from monolith_serving.core.serving_call import (
    CLASSIFY,
    GET_MODEL_METADATA,
    GET_MODEL_STATUS,
    PREDICT,
    REGRESS,
    REQUEST_ID_KEY,
    CallContext,
    RpcStatusError,
    UpstreamReply,
    method_name,
)
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

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
# ``method`` of a REST request refused before its path named a method (no such route, an unknown verb).
UNKNOWN_METHOD = "unknown"
# POST verbs → the gRPC method they name.
_VERB_METHODS = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}
# The verbs whose gRPC method every server refuses (core.predict_only), with the request message of that method.
_REFUSED_VERB_REQUESTS: dict[str, tuple[str, Any]] = {
    "Classify": (CLASSIFY, classification_pb2.ClassificationRequest),
    "Regress": (REGRESS, classification_pb2.RegressionRequest),
}
GET_MODEL_STATUS_METHOD = "GetModelStatus"
GET_MODEL_METADATA_METHOD = "GetModelMetadata"
_API_PATH = "/v1/"  # TF Serving answers every path under it (400 when malformed), and no other (404)
_MODELS_PATH = "/v1/models"
_ALLOWED_METHODS = "GET, POST"
_ALLOWED_METHODS_CORS = "GET, POST, OPTIONS"
# ``method`` of a CORS preflight (OPTIONS under /v1/ with ``RestConfig.cors``): it asks for no gRPC method.
PREFLIGHT_METHOD = "preflight"
# tensorflow_model_server's CORS headers, on every answer under /v1/ when CORS is on.
CORS_HEADERS = {
    hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*",
    hdrs.ACCESS_CONTROL_ALLOW_METHODS: "POST, GET",
    hdrs.ACCESS_CONTROL_ALLOW_HEADERS: "Content-Type",
}
_WEB_ORIGIN = re.compile(r"https?://")  # searched in a preflight's Origin, as TF Serving does
_METRICS_METHODS = "GET, HEAD"
# Exactly TF Serving's header (no charset parameter), answers and errors alike; the bytes are UTF-8.
_JSON_TYPE = "application/json"
BODY_BYTES_REASON = "body_bytes"  # ``count_rejected`` reason of a refusal by the body-byte budget
_READ_CHUNK_BYTES = 1 << 20  # the body stream buffers up to twice this before it stops reading the socket


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


class PendingCount(Protocol):
    """The count of a request whose backend call answered OK while the gateway still writes its client's answer."""

    def settle(self, code: grpc.StatusCode) -> None:
        """Counts the request once, with the code its client got."""
        ...


class RestBackend(Protocol):
    """What the gateway needs from the server behind it; called on the gateway's event loop.

    Each REST request is counted exactly once: by ``call`` or ``call_deferring_count`` of the request's own method
    (a failure there, the client cancelling included, is counted by the backend), by the :class:`PendingCount` the
    latter returns, or by ``count_refused`` when no call of its method was made. A call with ``ctx.internal`` (the
    signature lookup of a Predict) is counted by nobody.
    """

    def admitted(self) -> AbstractContextManager[None]:
        """Holds one admission slot for a whole REST request; refuses (a package error: ResourceExhaustedError,
        UnavailableError) when the backend takes no more, counting the refusal itself."""
        ...

    async def call(self, path: str, request: bytes, ctx: CallContext) -> UpstreamReply:
        """Serves a serialized TF Serving request of ``path`` within ``ctx.timeout_s``; fails with RpcStatusError
        (or a package error) carrying the status to answer."""
        ...

    async def call_deferring_count(
        self, path: str, request: bytes, ctx: CallContext
    ) -> tuple[UpstreamReply, PendingCount]:
        """``call``, leaving the count of an OK answer to the returned :class:`PendingCount`."""
        ...

    def count_refused(self, *, model: str | None, method: str, protocol: str, code: grpc.StatusCode) -> None:
        """Counts a request answered without a call of its own method (bad path or body, refused)."""
        ...

    def count_rejected(self, reason: str) -> None:
        """Counts a request refused for a bound of the gateway's own (``BODY_BYTES_REASON``)."""
        ...


@dataclass(frozen=True, kw_only=True)
class RestConfig:
    host: str = "0.0.0.0"
    port: int = 0
    server_name: str = "proxy"  # names the server in refusals ("proxy overloaded: ...", "entry stopping: ...")
    timeout_s: float = 30.0  # TF Serving's rest_api_timeout_in_ms default
    # Larger bodies are 413, refused before they are read. JSON numbers decode at ~0.1-1 us per byte on a thread
    # (1 us: floats, with their range check), so a 32 MiB body of floats takes about the whole default deadline;
    # base64 strings (serialized Instances) decode ~30x faster. A body is JSON, 1.3-3x the protobuf it becomes.
    max_body_bytes: int = 32 << 20
    # Bytes of the Predict bodies being read, decoded and forwarded at once, taken before a body is read (its
    # Content-Length, then whatever arrives beyond it); a body that does not fit is 429 at once. Decoded, a body
    # takes ~10-15x its size (Python objects per JSON value), up to ~25x for a body of empty lists, so this bounds
    # the memory of decoding at ~1-1.6 GB by default. Twice max_body_bytes: one largest body leaves room for others.
    # ``config_from_args`` keeps this default when --rest_api_max_body_bytes is raised, up to that size: memory
    # is this bound's business, not the body limit's.
    body_budget_bytes: int = 64 << 20
    signature_ttl_s: float = 30.0
    drain_timeout_s: float = 30.0  # how long stop() waits for requests in flight
    # Predict bodies this large or larger are decoded on ``decode_threads`` threads, off the event loop. Numbers
    # decode at ~60 ns/byte, so a 16 KiB body holds the loop ~1 ms, while the hop to a thread and back costs
    # ~30 us (3%); base64 strings decode ~15x faster, and the hop stays negligible in absolute terms.
    decode_offload_bytes: int = 16 << 10
    # Decoding holds the GIL, so more threads add no throughput; two keep one huge body from queueing every
    # other large one behind it. A decode waiting for a thread still counts against its request's deadline.
    # The same threads write large answers (below).
    decode_threads: int = 2
    # Predict answers with this many output elements (all outputs together) or more, or this many bytes from
    # upstream, are written to JSON on the decode threads. Writing takes ~1-1.4 us per float or string element
    # (formatted and read back, or escaped), ~0.2 us per integer, ~6 ns per byte of long strings: 1024 floats
    # hold the loop ~1.3 ms, as do ~128 KiB of long strings, while the hop to a thread and back costs ~40 us (3%).
    # A batch of 256 scores (~0.35 ms) stays on the loop.
    encode_offload_elements: int = 1024
    encode_offload_bytes: int = 128 << 10
    cors: bool = False  # --rest_api_enable_cors_support: CORS headers, OPTIONS preflights answered
    # --monitoring_config_file: the raw URL path (core.monitoring_config checks it) the server's Prometheus
    # registry is served at; None: not served.
    prometheus_path: str | None = None

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if self.body_budget_bytes < self.max_body_bytes:
            raise ValueError(
                f"body_budget_bytes ({self.body_budget_bytes}) must be at least max_body_bytes "
                f"({self.max_body_bytes}): a body of the largest size allowed must fit"
            )
        if self.decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {self.decode_threads}")


class _BadPath(InvalidArgumentError):
    """A malformed request path: 400, counted INVALID_ARGUMENT."""


class _MethodNotAllowed(InvalidArgumentError):
    """An HTTP method the path does not take: 405, counted INVALID_ARGUMENT (the caller's mistake)."""


class _BodyTooLarge(InvalidArgumentError):
    """A body over ``max_body_bytes``: 413, counted INVALID_ARGUMENT (the caller's mistake)."""


class _CodecStep(Protocol[T_co]):
    """A step of decoding a body or writing an answer; it stops, raising DecodeCancelled, soon after ``cancel``
    is set."""

    def __call__(self, *, cancel: DecodeCancel) -> T_co: ...


class _BudgetHold:
    """The budget bytes one REST request holds: its body's, then as many as its answer needs if that is more.
    They are given back once the request is answered and no step of it on the codec threads still runs: a step
    its deadline cut short runs on in its thread until its next cancel check, holding the memory it decodes (or
    writes) into, so its bytes stay taken until it ends. Owned by the gateway's event loop."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.size_bytes = 0
        self._holders = 1  # the handler until it answers, plus each codec step handed to a thread

    def take(self, size_bytes: int) -> bool:
        if not self._budget.try_take(size_bytes):
            return False
        self.size_bytes += size_bytes
        return True

    def grow_to(self, size_bytes: int) -> bool:
        """Holds at least ``size_bytes`` in all, taking what it lacks; False (nothing taken) if it does not fit."""
        return size_bytes <= self.size_bytes or self.take(size_bytes - self.size_bytes)

    def hold(self) -> None:
        self._holders += 1

    def release(self) -> None:
        """Called once by the handler and once per codec step when it ends."""
        self._holders -= 1
        if self._holders == 0:
            self._budget.give_back(self.size_bytes)
            self.size_bytes = 0


@dataclass
class _RestCall:
    """One REST request as its core calls see it, and what the gateway needs to count it when no core call
    of its own method does. Owned by one handler."""

    request_id: str
    deadline: float  # on the gateway's clock, fixed when the request arrived
    held: _BudgetHold
    method: str = UNKNOWN_METHOD  # the gRPC method the path asks for, once read from it
    model: str | None = None  # the model name in the path, once read (not yet vouched for: not a label)
    counted: bool = False  # a core call of ``method`` ran: the core counted a failure of it, or left ``answered``
    answered: PendingCount | None = None  # that call answered OK: settled with the code the client gets


@dataclass(frozen=True)
class _CodecJob:
    """What a step on the codec threads works on, as its 504 (or 503) and log line name it."""

    kind: str  # "decoding" or "writing"
    subject: str  # "the 1234-byte request body"

    @property
    def doing(self) -> str:
        return f"{self.kind} {self.subject}"


def parse_version(text: str) -> int:
    """A version path segment: ASCII digits only (``str.isdigit`` also takes '²') and within int64."""
    if not (text.isascii() and text.isdigit()):
        raise _BadPath(f"version must be a non-negative integer, got {text!r}")
    version = int(text)
    if version > MAX_VERSION:
        raise _BadPath(f"version {text} is out of range (at most {MAX_VERSION})")
    return version


@dataclass(frozen=True)
class RestTarget:
    """What a REST path asks for: one gRPC method of one model."""

    method: str  # Predict, Classify, Regress, GetModelStatus or GetModelMetadata
    model: ModelRef


def _path_word(segment: str, word: str) -> bool:
    """TF Serving matches its paths case-insensitively (``(?i)`` in its patterns)."""
    return segment.lower() == word


def _percent_decoded(segment: str) -> str:
    """A path segment as TF Serving decodes a name or label (curl_easy_unescape): ``%XX`` escapes, ``+`` kept."""
    try:
        return urllib.parse.unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise _BadPath(f"path segment {segment!r} is not UTF-8 once percent-decoded") from None


def _model_ref(segments: list[str]) -> ModelRef | None:
    """``name[/versions/v|/labels/l]`` split at '/' (still percent-encoded, so an escaped '/' stays in its
    segment) → ModelRef, or None when that is not their shape."""
    name, *rest = (_percent_decoded(segment) for segment in segments)
    if not name:
        return None
    if not rest:
        return ModelRef(name=name)
    if len(rest) != 2:
        return None
    kind, value = rest
    if _path_word(kind, "versions"):
        return ModelRef(name=name, version=parse_version(value))
    if _path_word(kind, "labels") and value:
        return ModelRef(name=name, label=value)
    return None


def parse_rest_target(http_method: str, raw_path: str) -> RestTarget:
    """TF Serving's URL grammar (model_servers/http_rest_api_util.cc) on the raw, still percent-encoded path:

      POST /v1/models/{name}[/versions/{v}|/labels/{l}]:(predict|classify|regress)
      GET  /v1/models/{name}[/versions/{v}|/labels/{l}][/metadata]

    As there, the fixed words are case-insensitive (the verbs are not) and the name and label are percent-decoded;
    unlike there, a name may hold a raw ':' (Monolith v3 names are ``{model}:entry``; the verb is what follows
    the last ':'). Anything else is TF Serving's 400 ``Malformed request: <method> <path>``."""
    malformed = _BadPath(f"Malformed request: {http_method} {raw_path}")
    prefix, tail = raw_path[: len(_MODELS_PATH)], raw_path[len(_MODELS_PATH) :]
    if not _path_word(prefix, _MODELS_PATH):
        raise malformed
    if http_method == "GET" and not tail:
        raise _BadPath("Missing model name in request.")  # TF Serving's answer to GET /v1/models
    if not tail.startswith("/"):
        raise malformed
    resource = tail[1:]
    if http_method == "POST":
        resource, colon, verb = resource.rpartition(":")
        if not colon or verb not in _VERB_METHODS:
            raise malformed
        method = _VERB_METHODS[verb]
    else:
        method = GET_MODEL_STATUS_METHOD
        head, slash, last = resource.rpartition("/")
        if slash and _path_word(last, "metadata"):
            resource, method = head, GET_MODEL_METADATA_METHOD
    model = _model_ref(resource.split("/"))
    if model is None:
        raise malformed
    return RestTarget(method, model)


def _path_labels(http_method: str, raw_path: str) -> tuple[str | None, str]:
    """(model name, gRPC method) a path names, read leniently before it is parsed, so that a refusal of it is
    counted under them (the core labels a name it cannot vouch for ``unknown``)."""
    models = _MODELS_PATH + "/"
    if not _path_word(raw_path[: len(models)], models):
        return None, UNKNOWN_METHOD
    tail = raw_path[len(models) :]
    if http_method == "POST":
        resource, _colon, verb = tail.rpartition(":")
        method = _VERB_METHODS.get(verb, UNKNOWN_METHOD)
    else:
        resource = tail
        method = GET_MODEL_METADATA_METHOD if _path_word(tail[-9:], "/metadata") else GET_MODEL_STATUS_METHOD
    name = urllib.parse.unquote(resource.split("/", 1)[0])
    return name or None, method


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
    """``start()`` binds and serves; ``stop()`` stops accepting and waits for in-flight requests.

    ``metrics_registry`` is what ``config.prometheus_path`` serves (the registry of the server's /metrics); it is
    required when that is set."""

    def __init__(
        self,
        backend: RestBackend,
        config: RestConfig,
        *,
        metrics_registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.prometheus_path is not None and metrics_registry is None:
            raise ValueError(f"serving metrics at {config.prometheus_path} needs the registry to serve")
        self._backend = backend
        self._config = config
        self._metrics_registry = metrics_registry
        self._allowed_methods = _ALLOWED_METHODS_CORS if config.cors else _ALLOWED_METHODS
        self._clock = clock
        self._signatures = _SignatureCache(config.signature_ttl_s, clock)
        self._runner: web.AppRunner | None = None
        # Decodes large bodies and writes large answers, off the event loop.
        self._codec_pool: ThreadPoolExecutor | None = None
        self._budget = ByteBudget(config.body_budget_bytes)
        # Steps handed to the codec pool's threads and not yet ended: never more than its threads.
        self._codec_slots = asyncio.Semaphore(config.decode_threads)
        # Deadlines passing in the codec pool: one line per 10 s per kind, not one per request.
        self._codec_timeouts = RateLimitedLog(log, logging.WARNING, clock=clock)
        self.port: int | None = None

    @property
    def body_bytes_held(self) -> int:
        """Bytes of the byte budget held now (bodies being read, decoded or forwarded; answers being written)."""
        return self._budget.in_use_bytes

    async def start(self) -> int:
        if self._runner is not None and self.port is not None:
            return self.port
        if self._codec_pool is None:
            self._codec_pool = ThreadPoolExecutor(self._config.decode_threads, thread_name_prefix="rest-codec")
        app = web.Application(client_max_size=self._config.max_body_bytes)
        # "Expect: 100-continue" is answered by _read_body once the request is admitted: a refused client never
        # sends its body.
        # One route: the gateway reads the raw path itself, as TF Serving does (case-insensitive words, names
        # percent-decoded after the path is split, so an escaped '/' stays in a name).
        app.router.add_route("*", "/{tail:.*}", self._dispatch, expect_handler=_continue_later)
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
        pool, self._codec_pool = self._codec_pool, None
        if pool is not None:
            # Still running here: only steps whose requests were answered (deadline passed) or abandoned.
            pool.shutdown(wait=False, cancel_futures=True)

    # ---- handlers ------------------------------------------------------------------------------------------
    def _not_found(self, request: web.Request) -> web.Response:
        self._backend.count_refused(
            model=None, method=UNKNOWN_METHOD, protocol=PROTOCOL, code=grpc.StatusCode.NOT_FOUND
        )
        return _error(404, f"no such endpoint: {request.method} {request.rel_url.raw_path}")

    async def _metrics_page(self, request: web.Request, registry: CollectorRegistry) -> web.Response:
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            response = web.Response(
                status=405, text=f"method {request.method} not allowed: metrics take {_METRICS_METHODS}"
            )
            response.headers[hdrs.ALLOW] = _METRICS_METHODS
            return response
        encode, content_type = choose_encoder(request.headers.get(hdrs.ACCEPT, ""))
        # Off the loop: collecting a large registry takes milliseconds that every gRPC and REST client would wait.
        page = await asyncio.to_thread(encode, registry)
        return web.Response(body=page, headers={hdrs.CONTENT_TYPE: content_type})

    async def _dispatch(self, request: web.Request) -> web.Response:
        raw_path = request.rel_url.raw_path
        if self._metrics_registry is not None and raw_path == self._config.prometheus_path:
            return await self._metrics_page(request, self._metrics_registry)
        if not _path_word(raw_path[: len(_API_PATH)], _API_PATH):
            return self._not_found(request)
        request_id = request.headers.get(REQUEST_ID_KEY) or uuid.uuid4().hex
        call = _RestCall(request_id, self._clock() + self._config.timeout_s, _BudgetHold(self._budget))
        code = grpc.StatusCode.CANCELLED  # what the count says if the handler is cancelled (client gone)
        try:
            response = await self._route(request, call)
            code = grpc.StatusCode.OK
        except _BodyTooLarge as error:
            code = grpc.StatusCode.INVALID_ARGUMENT
            response = _error(413, error.message)
        except _MethodNotAllowed as error:
            code = grpc.StatusCode.INVALID_ARGUMENT
            response = _error(405, error.message)
            response.headers[hdrs.ALLOW] = self._allowed_methods
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
            call.held.release()
            if call.answered is not None:
                # The entry answered OK; writing its answer may not have (deadline, byte budget, no JSON form).
                call.answered.settle(code)
            elif not call.counted:
                # Answered before a core call of its own (bad path or body, body too large, refused at admission):
                # the core never saw it.
                self._backend.count_refused(model=call.model, method=call.method, protocol=PROTOCOL, code=code)
        response.headers[REQUEST_ID_KEY] = request_id
        if self._config.cors:
            response.headers.update(CORS_HEADERS)
        if not request.content.is_eof():
            # Answered without reading its body (refused): the connection is not reused. aiohttp still reads and
            # drops what the client sends for a while (lingering), so the client sees this answer.
            response.force_close()
        return response

    async def _route(self, request: web.Request, call: _RestCall) -> web.Response:
        """Sets ``call.method`` and ``call.model`` as soon as the path tells them, before anything can refuse
        the request, so a refusal is counted under them."""
        if request.method == hdrs.METH_OPTIONS and self._config.cors:
            call.method = PREFLIGHT_METHOD
            return _preflight(request)
        if request.method not in ("GET", "POST"):
            # TF Serving answers 400 "Malformed request"; 405 is HTTP's answer, and names the methods that work.
            raise _MethodNotAllowed(f"method {request.method} not allowed (the REST API takes {self._allowed_methods})")
        raw_path = request.rel_url.raw_path
        call.model, call.method = _path_labels(request.method, raw_path)
        target = parse_rest_target(request.method, raw_path)
        with self._backend.admitted():
            if target.method == "Predict":
                return await self._predict(request, target.model, call)
            if target.method in _REFUSED_VERB_REQUESTS:
                return await self._refused_inference(target.method, target.model, call)
            if target.method == GET_MODEL_METADATA_METHOD:
                return await self._metadata(target.model, call)
            return await self._status(target.model, call)

    async def _read_body(self, request: web.Request, call: _RestCall) -> bytes:
        """The body of an admitted request, read only as far as the byte budget lets it: a declared
        Content-Length is taken from the budget before a byte is read, and what arrives beyond it (a chunked
        body; a compressed one, which aiohttp inflates) as it arrives. Raises _BodyTooLarge beyond
        ``max_body_bytes`` and ResourceExhaustedError when the budget cannot take the bytes."""
        limit = self._config.max_body_bytes
        declared = request.content_length
        if declared is not None:
            if declared > limit:
                raise _BodyTooLarge(f"request body larger than {limit} bytes ({declared} declared)")
            self._take_body_bytes(call, declared)
        if request.version == HttpVersion11 and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp's own expect handler: the response has not started
        stream = request.content
        stream.set_read_chunk_size(_READ_CHUNK_BYTES)
        chunks: list[bytes] = []
        size = 0
        while chunk := await stream.readany():
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge(f"request body larger than {limit} bytes")
            if size > call.held.size_bytes:
                self._take_body_bytes(call, size - call.held.size_bytes)
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _take_body_bytes(self, call: _RestCall, size_bytes: int) -> None:
        if not call.held.take(size_bytes):
            raise self._budget_refusal(call.held.size_bytes + size_bytes)

    def _budget_refusal(self, more_bytes: int, purpose: str = "") -> ResourceExhaustedError:
        """The 429 of a request whose body or answer does not fit the byte budget now, counted as rejected."""
        self._backend.count_rejected(BODY_BYTES_REASON)
        budget = self._budget
        return ResourceExhaustedError(
            f"{self._config.server_name} overloaded: REST requests being decoded or answered hold "
            f"{budget.in_use_bytes} of {budget.capacity_bytes} bytes, no room for {more_bytes} more{purpose}"
        )

    async def _call_core(self, path: str, request: bytes, call: _RestCall) -> UpstreamReply:
        """One core call given only what is left of the request's deadline (none left: the core answers
        DEADLINE_EXCEEDED, counted like any other failure). A call of the request's own method marks the request
        counted: the core counts its failure; its OK answer's count is deferred to ``_dispatch``, which settles it
        with the code the client gets once the answer is written (or fails to be). A call of another method (a
        Predict's signature lookup) is internal, counted by nobody: the request is counted by its own core call,
        or by ``_dispatch`` if it ends first."""
        internal = method_name(path) != call.method
        ctx = CallContext(
            request_id=call.request_id,
            timeout_s=self._remaining_s(call),
            protocol=PROTOCOL,
            admitted=True,
            internal=internal,
        )
        if internal:
            return await self._backend.call(path, request, ctx)
        call.counted = True
        reply, call.answered = await self._backend.call_deferring_count(path, request, ctx)
        return reply

    async def _decode(self, call: _RestCall, body_bytes: int, work: _CodecStep[T]) -> T:
        """``work(cancel=...)``, a step of decoding a ``body_bytes`` body: on a codec thread if the body is large."""
        if not self._offloads(body_bytes):
            return work(cancel=DecodeCancel())
        return await self._on_codec_thread(call, _CodecJob("decoding", f"the {body_bytes}-byte request body"), work)

    async def _on_codec_thread(self, call: _RestCall, job: _CodecJob, work: _CodecStep[T]) -> T:
        """``work(cancel=...)`` on a codec thread; the caller has seen the pool (``_offloads``,
        ``_writes_off_loop``), and a pool dropped by stop() while the step waits for a slot is a 503.

        The codec keeps each C-level call short, so the thread lets the event loop run every few ms (the GIL's
        switch interval). A step first waits for one of ``decode_threads`` slots, so the pool's queue never holds
        a step no thread is free for; waiting and running are bounded by what is left of the request's deadline:
        past it the request is answered DEADLINE_EXCEEDED at once, and the step is cancelled (it stops at its next
        check, a few ms later at most). So is a step whose handler is cancelled.
        """
        cancel = DecodeCancel()
        try:
            await within(self._codec_slots.acquire(), self._remaining_s(call))
        except TimeoutError:
            self._codec_timeouts.log(
                ("waited", job.kind),
                "request %s: deadline passed while %s waited for a codec thread",
                call.request_id,
                job.subject,
            )
            raise DeadlineExceededError(f"the deadline passed while {job.subject} waited for a codec thread") from None
        # Read only now: stop() (after its drain timeout) may have shut the pool down while the step waited.
        pool = self._codec_pool
        if pool is None:
            self._codec_slots.release()
            raise _stopping(self._config.server_name, job)
        # The slot and the request's budget bytes are given back when the step ends, which may be after the answer.
        call.held.hold()
        loop = asyncio.get_running_loop()
        try:
            step = pool.submit(work, cancel=cancel)
        except BaseException as error:
            self._step_ended(call.held)
            if isinstance(error, RuntimeError):  # shut down by stop(), not yet dropped: submit refuses new work
                raise _stopping(self._config.server_name, job) from None
            raise
        step.add_done_callback(functools.partial(self._on_step_ended, loop, call.held))
        try:
            return await within(asyncio.wrap_future(step), self._remaining_s(call))
        except TimeoutError:
            # A running thread cannot be stopped from outside: the step stops at its next cancel check (finally)
            # and its slot and its request's bytes stay taken until then.
            self._codec_timeouts.log(job.kind, "request %s: deadline passed while %s", call.request_id, job.doing)
            raise DeadlineExceededError(f"the deadline passed while {job.doing}") from None
        finally:
            cancel.set()  # nobody waits for the step any more (it may have ended: then this does nothing)

    def _remaining_s(self, call: _RestCall) -> float:
        return max(call.deadline - self._clock(), 0.0)

    def _on_step_ended(self, loop: asyncio.AbstractEventLoop, held: _BudgetHold, _step: Future[Any]) -> None:
        """Runs on the codec thread when a step ends (on the loop if it was cancelled before it started)."""
        try:
            loop.call_soon_threadsafe(self._step_ended, held)
        except RuntimeError:
            # The loop is closed: the gateway is gone with its budget and slots, there is nothing to give back to.
            log.debug("a REST codec step ended after its event loop closed")

    def _step_ended(self, held: _BudgetHold) -> None:
        self._codec_slots.release()
        held.release()

    def _offloads(self, body_bytes: int) -> bool:
        return body_bytes >= self._config.decode_offload_bytes and self._codec_pool is not None

    def _writes_off_loop(self, size: AnswerSize) -> bool:
        config = self._config
        large = size.elements >= config.encode_offload_elements or size.wire_bytes >= config.encode_offload_bytes
        return large and self._codec_pool is not None

    async def _predict(self, http_request: web.Request, model: ModelRef, call: _RestCall) -> web.Response:
        body = await self._read_body(http_request, call)
        size = len(body)
        parse = functools.partial(parse_predict_body, body, on_thread=self._offloads(size))
        del body  # each stage is dropped once the next is built: its memory is free before the Predict is sent
        parsed = await self._decode(call, size, parse)
        del parse
        signature_inputs = await self._signature_inputs(model, parsed.signature_name, call)
        encode = functools.partial(_encode_predict_request, model, parsed, signature_inputs)
        row_format = parsed.row_format
        del parsed
        request = await self._decode(call, size, encode)
        del encode
        reply = await self._call_core(PREDICT, request, call)
        del request
        answer = await self._write_answer(reply.response, row_format, call)
        return web.Response(status=200, body=answer, content_type=_JSON_TYPE)

    async def _write_answer(self, reply: bytes, row_format: bool, call: _RestCall) -> bytes:
        """The JSON answer to a Predict the entry answered ``reply``: written on the loop when it is small, else
        on a codec thread, once the request holds the answer's share of the byte budget."""
        # On the loop: protobuf (upb) holds the GIL for a whole parse, a thread would not spare the loop. It is
        # lazy for packed numbers (~20 us for 200k floats), ~80 ns per string.
        response = predict_pb2.PredictResponse.FromString(reply)
        size = answer_size(response, len(reply))
        write = functools.partial(_predict_answer, response, row_format)
        if not self._writes_off_loop(size):
            return write(cancel=DecodeCancel())
        self._take_answer_bytes(call, size)
        return await self._on_codec_thread(call, _CodecJob("writing", f"the {size.elements}-element answer"), write)

    def _take_answer_bytes(self, call: _RestCall, size: AnswerSize) -> None:
        """The request's budget bytes grow to its answer's share (its body, decoded and forwarded, is gone by
        now: the bytes it held are the answer's), at most the whole budget: the upstream Predict already ran, and
        a refusal a retry can never pass would only invite clients to run it again. So an answer whose share
        exceeds the budget is written alone, once the budget is free. Refused (429) as a body is, when the bytes
        do not fit now."""
        needed = min(size.budget_bytes, self._budget.capacity_bytes)
        if not call.held.grow_to(needed):
            more = needed - call.held.size_bytes
            raise self._budget_refusal(more, f" to write a {size.elements}-element answer")

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

    async def _refused_inference(self, method: str, model: ModelRef, call: _RestCall) -> web.Response:
        """``:classify`` and ``:regress``: the server answers them as tensorflow_model_server does on a model with
        predict signatures only (``core.predict_only``): NOT_FOUND for a model or version it does not serve, else
        INVALID_ARGUMENT. Its answer depends on the model alone, so the body is left unread."""
        path, message = _REFUSED_VERB_REQUESTS[method]
        await self._call_core(path, message(model_spec=model.to_spec()).SerializeToString(), call)
        # Only a server that has such signatures gets here; its answer has no JSON rendering in this gateway.
        raise RpcStatusError(grpc.StatusCode.UNIMPLEMENTED, f"{method} answers cannot be written as JSON here")

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


async def _continue_later(request: web.Request) -> None:
    """The routes' expect handler: refuses an expectation other than 100-continue (417, as aiohttp's own), and
    leaves "100 Continue" to ``RestGateway._read_body``, sent once the request is admitted."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11 and expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")


def _preflight(request: web.Request) -> web.Response:
    """A CORS preflight's answer (its CORS headers are added with every other answer's): any path under /v1/ and
    any requested method or headers pass, as in TF Serving; only a web page's origin is required."""
    if not _WEB_ORIGIN.search(request.headers.get(hdrs.ORIGIN, "")):
        raise RpcStatusError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "CORS preflight without an Origin header naming an http:// or https:// origin",
        )
    return web.Response(status=200)


def _stopping(server_name: str, job: _CodecJob) -> UnavailableError:
    return UnavailableError(f"{server_name} stopping: no codec thread is left for {job.doing}")


def _encode_predict_request(
    model: ModelRef, body: PredictBody, signature_inputs: dict[str, int] | None, *, cancel: DecodeCancel
) -> bytes:
    return build_predict_request(model, body, signature_inputs, cancel).SerializeToString()


def _predict_answer(response: predict_pb2.PredictResponse, row_format: bool, *, cancel: DecodeCancel) -> bytes:
    return predict_response_text(response, row_format, cancel).encode()


def _json(status: int, document: Any) -> web.Response:
    return web.Response(status=status, body=json.dumps(document).encode(), content_type=_JSON_TYPE)


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"error": message})
