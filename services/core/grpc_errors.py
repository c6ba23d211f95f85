"""The one place where package errors become gRPC status codes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from monolith_serving.core.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    MonolithServingError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from monolith_serving.core.log_limit import RateLimitedLog
from monolith_serving.core.metrics import GrpcServerMetrics

logger = logging.getLogger(__name__)

_CODES: tuple[tuple[type[MonolithServingError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def status_code_for(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for an error; anything unexpected is INTERNAL."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Deserializer = Callable[[bytes], Any]


def _message_name(deserializer: Deserializer, method: str) -> str:
    """The full name of the message a generated ``X.FromString`` parses; else the request of ``method``."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    full_name = getattr(descriptor, "full_name", None)
    return full_name if isinstance(full_name, str) else f"request of {method}"


async def _abort_unless_ended(
    context: grpc.aio.ServicerContext, method: str, code: grpc.StatusCode, details: str
) -> None:
    """Ends the call with ``code``, or does nothing when the call has already ended.

    A call can end while its handler still works: its deadline passes, the client cancels, or the handler has
    aborted already. No status can be sent then (a second abort raises UsageError, an abort of a call that core has
    already ended raises ExecuteBatchError) and nobody would read it. grpc ends such a call quietly once the handler
    returns: it re-raises the abort it recorded.
    """
    if context.done():
        return
    try:
        await context.abort(code, details)
    except grpc.aio.InternalError as error:
        logger.debug("%s: call ended before its status %s could be sent: %s", method, code.name, error)


def _wrap(
    behavior: Behavior,
    method: str,
    deserializer: Deserializer | None,
    malformed_log: RateLimitedLog,
    metrics: GrpcServerMetrics | None,
) -> Behavior:
    message_name = "" if deserializer is None else _message_name(deserializer, method)
    # grpc calls a handler's deserializer before any of this runs, and takes a decode error there for a servicer bug
    # (an ERROR log, UNKNOWN). So the wrapped handler takes the bytes as they came and the guard calls the same
    # deserializer: still one parse of the same bytes object, no copy.
    malformed_prefix = f"Error parsing message with type '{message_name}': "  # upb's wording; kept when it differs
    malformed_count = None if metrics is None else metrics.malformed_requests.labels(method)

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if deserializer is not None:
                try:
                    request = deserializer(request)
                except DecodeError as error:
                    reason = str(error).removeprefix(malformed_prefix)
                    if malformed_count is not None:
                        malformed_count.inc()
                    # Bad input, not a bug; but it never reaches the service, so this is the only place it shows.
                    malformed_log.log(
                        method, "%s from %s: malformed %s: %s", method, context.peer(), message_name, reason
                    )
                    raise InvalidArgumentError(f"malformed {message_name}: {reason}") from None
            return await behavior(request, context)
        except MonolithServingError as error:
            await _abort_unless_ended(context, method, status_code_for(error), error.message)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as error:
            if isinstance(error, grpc.aio.InternalError) and context.done():
                # The handler's own abort came after the call had ended (deadline passed, client cancelled): not a
                # bug, and there is nobody left to answer.
                logger.debug("%s: call ended before the handler's status could be sent: %s", method, error)
                return None
            # A bug, not bad input: log it with its traceback, answer INTERNAL, keep serving.
            logger.exception("unhandled error in %s", method)
            await _abort_unless_ended(
                context, method, grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}"
            )
        return None

    return guarded


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Turns package errors raised by unary handlers into gRPC statuses with their message, and a request body that
    does not parse into INVALID_ARGUMENT naming its message type. Streaming handlers pass through untouched.

    Wrapped handlers are cached per method, so the per-call cost is one dict lookup. With ``metrics``, malformed
    bodies are also counted per method.
    """

    def __init__(self, metrics: GrpcServerMetrics | None = None) -> None:
        self._metrics = metrics
        self._cache: dict[str, grpc.RpcMethodHandler] = {}
        # A client sending garbage would otherwise log one WARNING per call.
        self._malformed_log = RateLimitedLog(logger, logging.WARNING)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = grpc.unary_unary_rpc_method_handler(
            _wrap(handler.unary_unary, method, handler.request_deserializer, self._malformed_log, self._metrics),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
        self._cache[method] = wrapped
        return wrapped
