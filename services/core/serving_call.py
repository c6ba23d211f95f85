"""One TF Serving call as bytes, apart from any transport: the method paths, what a transport knows about the call
(:class:`CallContext`), and how it ends (:class:`UpstreamReply`, or :class:`RpcStatusError` with the status to relay).

The proxy's core serves such calls by forwarding them to entry replicas; a model server's REST API serves them with
the server's own gRPC handlers, in its process (``core.local_calls``). The REST gateway (``core.rest_gateway``)
speaks these types to either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from monolith_serving.core.errors import MonolithServingError

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
PREDICT = f"/{PREDICTION_SERVICE}/Predict"
GET_MODEL_METADATA = f"/{PREDICTION_SERVICE}/GetModelMetadata"
CLASSIFY = f"/{PREDICTION_SERVICE}/Classify"
REGRESS = f"/{PREDICTION_SERVICE}/Regress"
GET_MODEL_STATUS = f"/{MODEL_SERVICE}/GetModelStatus"
REQUEST_ID_KEY = "x-request-id"

Metadata = tuple[tuple[str, str | bytes], ...]


def method_name(path: str) -> str:
    """``/package.Service/Method`` -> ``Method``."""
    return path.rsplit("/", 1)[-1]


def relayable(metadata: Any) -> Metadata:
    """Trailing metadata worth passing back: the answering server's own keys, not gRPC's reserved ones."""
    if not metadata:
        return ()
    return tuple((str(k), v) for k, v in metadata if not str(k).startswith("grpc-"))


class RpcStatusError(MonolithServingError):
    """A failure with an explicit gRPC status, relayed to the client as is (code, message, trailers)."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing: Metadata = ()) -> None:
        super().__init__(message)
        self.code = code
        self.trailing = trailing

    @classmethod
    def of_call(cls, error: grpc.aio.AioRpcError) -> RpcStatusError:
        """The status a failed grpc.aio call ended with (its code's name when it has no details)."""
        return cls(error.code(), error.details() or error.code().name, relayable(error.trailing_metadata()))

    def __reduce__(self) -> tuple[type[RpcStatusError], tuple[grpc.StatusCode, str, Metadata]]:
        # copy.copy (the Coalescer gives each waiter its own copy) would otherwise call us with args=(message,).
        return (RpcStatusError, (self.code, self.message, self.trailing))


@dataclass(frozen=True)
class UpstreamReply:
    """The serialized response of the server that answered, with its trailing metadata worth relaying."""

    response: bytes
    trailing: Metadata


@dataclass(frozen=True, kw_only=True)
class CallContext:
    """What a transport knows about one client call."""

    request_id: str
    timeout_s: float | None
    protocol: str  # "grpc" or "rest", a metrics label
    admin_token: str | None = None  # token the caller presented, if any
    # The transport holds an admission slot for the whole client request (``admitted()`` of its backend, taken by
    # the REST gateway before it reads the body): this call is part of it and takes no slot of its own.
    admitted: bool = False
    # A call the transport makes on behalf of a client request of another method (the REST gateway's signature
    # lookup for a Predict): not a client request, so neither counted nor timed as one; the transport counts the
    # request it serves, once. Failures still log.
    internal: bool = False
