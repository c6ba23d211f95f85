"""A server's own unary gRPC methods, called in its process: the handlers its gRPC server serves, without a socket.

``LocalCalls`` is given the same ``add_*`` functions as ``core.grpc_server.build_server`` and keeps the handlers
they register, behind the same error mapping (``ErrorMappingInterceptor``: package errors become their status, a
bug INTERNAL). A call runs its handler with a :class:`LocalServicerContext`, a complete grpc.aio context of a unary
call that came from this process: its deadline (``time_remaining``; past it the handler is cancelled and the call
ends DEADLINE_EXCEEDED, as the server does), its metadata, and the status the handler aborts with or sets. The
serializers are the registered ones, so a handler that answers pre-serialized bytes (the PS's Predict) works too.

What the gRPC server adds and a local call goes without: the transport (TLS, message-size limits), health and
reflection (not registered here), and the server's own metrics (``grpc_server_malformed_requests``: a local
caller sends messages it serialized itself).

Why: the REST API of a model server (``core.model_server_rest``) answers through these calls. Sent to the server's
own gRPC port instead (a grpc.aio channel on loopback), a REST Predict of 16 examples cost the entry 1.44-1.63 ms of
CPU instead of 0.57-0.67, at 580-670 requests/s instead of 1160-1410 (docs/entry.md, "REST API").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from monolith_serving.core.grpc_errors import ErrorMappingInterceptor
from monolith_serving.core.serving_call import Metadata, RpcStatusError, UpstreamReply, relayable

# What gRPC answers a call its deadline cut short.
DEADLINE_EXCEEDED_DETAILS = "Deadline Exceeded"
LOCAL_PEER = "local"  # ``context.peer()`` of a local call; gRPC's peers are "ipv4:…", "ipv6:…", "unix:…"


class LocalServicerContext(grpc.aio.ServicerContext):  # type: ignore[misc]
    """The context of one unary call served in this process. Nothing goes over a wire: metadata and compression
    settings are kept, not sent; reading or writing messages, which unary handlers never do, is a UsageError as
    grpc makes it. Owned by the call's task."""

    def __init__(
        self, *, metadata: Metadata, deadline: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._clock = clock
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: Metadata = ()
        self._initial: Metadata = ()
        self._aborted = False
        self._done = False
        self._cancelled = False
        self._callbacks: list[Callable[[LocalServicerContext], None]] = []

    async def read(self) -> NoReturn:
        raise grpc.aio.UsageError("read() is for streaming requests; this is a unary call")

    async def write(self, message: Any) -> NoReturn:
        raise grpc.aio.UsageError("write() is for streaming responses; this is a unary call")

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        self._initial = tuple(initial_metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        if self._aborted:
            raise grpc.aio.UsageError("Abort was already called!")
        self._aborted = True
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata)

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_compression(self, compression: grpc.Compression) -> None:
        """Nothing is sent, so nothing is compressed."""

    def disable_next_message_compression(self) -> None:
        """Nothing is sent, so nothing is compressed."""

    def peer(self) -> str:
        return LOCAL_PEER

    def peer_identities(self) -> Iterable[bytes] | None:
        return None  # no TLS: no certificate identities

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return {}

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline (0 once it passed); None without one."""
        return None if self._deadline is None else max(self._deadline - self._clock(), 0.0)

    def trailing_metadata(self) -> Metadata:
        return self._trailing

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    def add_done_callback(self, callback: Callable[[LocalServicerContext], None]) -> None:
        self._callbacks.append(callback)

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done

    def end(self, *, cancelled: bool) -> None:
        """The call is over (answered, failed, or cancelled): runs the done callbacks once."""
        if self._done:
            return
        self._done, self._cancelled = True, cancelled
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


@dataclass(frozen=True)
class _CallDetails:
    """``grpc.HandlerCallDetails`` of a local call."""

    method: str
    invocation_metadata: Metadata


class _Registrar:
    """Stands in for the gRPC server while ``add_*`` functions register their handlers on it."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, method_handlers: Mapping[str, Any]) -> None:
        """The same handlers as the generic ones, registered by name for gRPC core's speed: nothing to keep."""


class LocalCalls:
    """Unary calls of the methods ``add_servicers`` register (the functions given to ``build_server``), served in
    this process. Owned by one event loop."""

    def __init__(
        self, add_servicers: Iterable[Callable[[Any], None]], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        registrar = _Registrar()
        for add in add_servicers:
            add(registrar)
        self._handlers = tuple(registrar.handlers)
        self._interceptor = ErrorMappingInterceptor()  # caches the wrapped handler per method
        self._clock = clock

    async def _continuation(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        for handlers in self._handlers:
            handler = handlers.service(details)
            if handler is not None:
                return handler
        return None

    async def call(self, path: str, request: bytes, *, timeout_s: float | None, metadata: Metadata) -> UpstreamReply:
        """The answer of ``path`` (``/package.Service/Method``) to the serialized ``request``, or RpcStatusError
        with the status the gRPC server would have ended the call with."""
        handler = await self._interceptor.intercept_service(self._continuation, _CallDetails(path, metadata))
        if handler is None or handler.unary_unary is None:
            raise RpcStatusError(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {path}")
        message: Any = request if handler.request_deserializer is None else handler.request_deserializer(request)
        deadline = None if timeout_s is None else self._clock() + timeout_s
        context = LocalServicerContext(metadata=metadata, deadline=deadline, clock=self._clock)
        cancelled = True
        try:
            # Cancelled at the deadline, as the gRPC server cancels the task of a call whose deadline passed.
            async with asyncio.timeout(timeout_s):
                response = await handler.unary_unary(message, context)
            cancelled = False
        except TimeoutError:
            raise RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_EXCEEDED_DETAILS) from None
        except grpc.aio.AbortError:
            cancelled = False
            raise _status_error(context) from None
        finally:
            context.end(cancelled=cancelled)
        code = context.code()
        if code is not None and code is not grpc.StatusCode.OK:
            raise _status_error(context)  # set_code without abort: the server drops the response and ends so
        if response is None:
            raise RpcStatusError(grpc.StatusCode.INTERNAL, f"{path}: the handler returned no response")
        serialize = handler.response_serializer
        answer = response if serialize is None else serialize(response)
        return UpstreamReply(response=answer, trailing=relayable(context.trailing_metadata()))


def _status_error(context: LocalServicerContext) -> RpcStatusError:
    code = context.code() or grpc.StatusCode.UNKNOWN
    return RpcStatusError(code, context.details() or code.name, relayable(context.trailing_metadata()))
