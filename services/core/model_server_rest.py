"""A model server's REST API (entry, unified): the REST gateway answered by the server's own gRPC handlers.

Each REST request becomes the gRPC call a gRPC client would make, served in this process by the handlers the gRPC
server serves (``core.local_calls``: the same servicers, error mapping, Predict coalescing and deadlines, and the
per-method metrics: ``entry_predict_requests_total`` counts REST Predicts too). So a REST answer is the gRPC answer,
its status mapped to HTTP as the proxy maps it; only the transport differs. The REST API is plain HTTP whatever
``--ssl_config_file`` says for the gRPC port, as tensorflow_model_server's is, and reaches only what the gateway asks
for: Predict, GetModelMetadata and GetModelStatus (never HandleReloadConfigRequest).

Backpressure: the gateway's body bound and byte budget (``--rest_api_max_body_bytes``,
``--rest_api_body_budget_bytes``) bound the memory of REST work; the number of REST requests in flight is not
bounded here, as the server's gRPC port bounds none (the proxy's ``--max_in_flight`` is where clients are counted).
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, Counter

from monolith_serving.core.local_calls import LocalCalls
from monolith_serving.core.metric_children import LabelledChildren
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

# What the gateway calls; it never asks for another method.
_SERVED_PATHS = frozenset({PREDICT, GET_MODEL_METADATA, GET_MODEL_STATUS, CLASSIFY, REGRESS})


class RestApiMetrics:
    """The REST API's counts on the server's registry, named for the server (``entry_rest_requests_total``)."""

    def __init__(self, registry: CollectorRegistry, server: str) -> None:
        self.requests = Counter(
            f"{server}_rest_requests",
            "REST API requests by the gRPC method they ask for (unknown: no such route) and the gRPC code of their "
            "answer (its HTTP status is the code's, as the proxy maps them)",
            ["method", "code"],
            registry=registry,
        )
        self.rejected = Counter(
            f"{server}_rest_rejected_requests",
            "REST API requests refused before any work, by reason (body_bytes: the byte budget was full)",
            ["reason"],
            registry=registry,
        )
        self._requests = LabelledChildren(self.requests)

    def count(self, method: str, code: grpc.StatusCode) -> None:
        self._requests[(method, code.name)].inc()


@dataclass(frozen=True)
class _PendingCount:
    metrics: RestApiMetrics
    method: str

    def settle(self, code: grpc.StatusCode) -> None:
        self.metrics.count(self.method, code)


class LocalRestBackend:
    """The gateway's backend (``core.rest_gateway.RestBackend``) over a server's :class:`LocalCalls`. Owned by the
    server's event loop."""

    def __init__(self, calls: LocalCalls, metrics: RestApiMetrics) -> None:
        self._calls = calls
        self._metrics = metrics

    def admitted(self) -> AbstractContextManager[None]:
        """No bound of its own (module docstring): the gateway's byte budget bounds what REST requests hold."""
        return contextlib.nullcontext()

    async def call(self, path: str, request: bytes, ctx: CallContext) -> UpstreamReply:
        return await self._call(path, request, ctx, count_answer=True)

    async def call_deferring_count(
        self, path: str, request: bytes, ctx: CallContext
    ) -> tuple[UpstreamReply, _PendingCount]:
        if ctx.internal:
            raise ValueError("an internal call is not counted: there is no count to defer")
        reply = await self._call(path, request, ctx, count_answer=False)
        return reply, _PendingCount(self._metrics, method_name(path))

    def count_refused(self, *, model: str | None, method: str, protocol: str, code: grpc.StatusCode) -> None:
        self._metrics.count(method, code)

    def count_rejected(self, reason: str) -> None:
        self._metrics.rejected.labels(reason).inc()

    async def _call(self, path: str, request: bytes, ctx: CallContext, *, count_answer: bool) -> UpstreamReply:
        """One call; a failure (a cancelled call too) is counted unless ``ctx.internal``, an OK answer only when
        ``count_answer``."""
        code = grpc.StatusCode.OK
        try:
            if path not in _SERVED_PATHS:
                raise RpcStatusError(grpc.StatusCode.UNIMPLEMENTED, f"{path} is not served over REST")
            if ctx.timeout_s is not None and ctx.timeout_s <= 0:
                raise RpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call began")
            metadata = ((REQUEST_ID_KEY, ctx.request_id),)
            return await self._calls.call(path, request, timeout_s=ctx.timeout_s, metadata=metadata)
        except RpcStatusError as error:
            code = error.code
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the gateway's handler was cancelled: its client went away
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            if not ctx.internal and (count_answer or code is not grpc.StatusCode.OK):
                self._metrics.count(method_name(path), code)
