"""The gRPC face of the proxy: generic byte-level handlers for TF Serving's two services.

Handlers receive and return raw bytes (no (de)serializers), so tensors are never decoded here. The
client's deadline (``time_remaining``) and a request id (``x-request-id``, generated when absent) go
downstream; the entry's trailing metadata (e.g. ``x-monolith-ps-versions``) comes back to the client.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable

import grpc

from monolith_serving.core.admin_token import bearer_token
from monolith_serving.core.serving_call import (
    GET_MODEL_STATUS,
    MODEL_SERVICE,
    PREDICTION_SERVICE,
    REQUEST_ID_KEY,
    CallContext,
    RpcStatusError,
    method_name,
)
from monolith_serving.proxy.core import RELOAD_CONFIG, ROUTED_METHODS, ProxyCore

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _admin_token(metadata: tuple[tuple[str, str | bytes], ...]) -> str | None:
    for key, value in metadata:
        if isinstance(value, bytes):
            continue
        if key == "x-admin-token":
            return value
        if key == "authorization" and (token := bearer_token(value)) is not None:
            return token
    return None


class RequestIds:
    """32 hex characters per id: a random per-process prefix and a counter.

    Unique across proxies (64 random bits per process) and a fraction of uuid4's cost, which reads
    os.urandom and builds a UUID object per request.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


class ProxyServicer:
    """Builds the generic handlers; errors other than RpcStatusError go to the ErrorMappingInterceptor."""

    def __init__(self, core: ProxyCore) -> None:
        self._core = core
        self._request_ids = RequestIds()

    def _handler(self, path: str) -> Handler:
        core = self._core
        new_request_id = self._request_ids
        wants_token = path == RELOAD_CONFIG

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = context.invocation_metadata() or ()
            request_id = ""
            for key, value in metadata:
                if key == REQUEST_ID_KEY and isinstance(value, str):
                    request_id = value
                    break
            if not request_id:
                request_id = new_request_id()
            ctx = CallContext(
                request_id=request_id,
                timeout_s=context.time_remaining(),
                protocol="grpc",
                admin_token=_admin_token(metadata) if wants_token else None,
            )
            try:
                reply = await core.call(path, request, ctx)
            except RpcStatusError as error:
                await context.abort(error.code, error.message, ((REQUEST_ID_KEY, request_id), *error.trailing))
                raise AssertionError("unreachable: abort raises") from None
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id), *reply.trailing))
            return reply.response

        handle.__qualname__ = f"ProxyServicer.{method_name(path)}"
        return handle

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        prediction = {
            name: grpc.unary_unary_rpc_method_handler(self._handler(f"/{PREDICTION_SERVICE}/{name}"))
            for name in ROUTED_METHODS
        }
        model = {
            method_name(path): grpc.unary_unary_rpc_method_handler(self._handler(path))
            for path in (GET_MODEL_STATUS, RELOAD_CONFIG)
        }
        return [
            grpc.method_handlers_generic_handler(PREDICTION_SERVICE, prediction),
            grpc.method_handlers_generic_handler(MODEL_SERVICE, model),
        ]

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(tuple(self.generic_handlers()))
