"""Coalescing concurrent Predicts for one target into one upstream Predict (``core.coalesce.Coalescer``).

Each Python gRPC hop costs ~0.2 ms of server CPU and ~0.1 ms of client CPU whatever its size, and the
proxy adds one hop per request. So while a Predict for a target is in flight, the Predicts that arrive for
the same target wait as one group; when it returns, the group goes upstream as ONE Predict (the members'
examples concatenated) and the response is split back into each member's rows. The entry then gets fewer,
larger requests: both the proxy's upstream calls and the entry's server hops are amortized. At low load
nothing waits (no timer) and a request goes upstream as the bytes the client sent.

Large requests are never merged: they go upstream alone, unparsed. Merging copies and re-serializes every
example (~1.3 ns per byte, all of it on the event loop), which beyond ~250 KB costs more CPU than the hop it
saves, and a 120 MB request held the loop ~75 ms just to parse. A thread would not spare the loop: the
protobuf runtime (upb) holds the GIL for a whole parse or serialization.

Only Monolith entry inputs are merged: a PredictRequest whose only input is ``instances`` or ``examples``,
DT_STRING, shape ``[n]`` with ``n`` strings. Anything else goes upstream untouched. Requests merge when
their ``model_spec``, ``output_filter`` and input name are equal.

Isolation: a merged call failing with a status that is not about the upstream's capacity (one bad member
makes the whole batch INVALID_ARGUMENT), or a response that cannot be split row-wise, is answered by
sending every member again on its own, so each client gets the answer it would have got alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.unknown_fields import UnknownFieldSet

from monolith_serving.core.coalesce import Coalescer, CoalescerCalls
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.serving_call import RpcStatusError, UpstreamReply
from monolith_serving.core.tensor_codec import numpy_dtype_for
from monolith_serving.proto_gen.tensorflow.core.framework import tensor_pb2, types_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2

log = logging.getLogger(__name__)

INPUT_NAMES = frozenset({"instances", "examples"})  # the Monolith entry's string inputs
# Failures about the upstream's capacity or reachability: sending the members again, one by one, would only
# multiply the load on a struggling entry, so every member gets the merged call's answer.
SHARED_FAILURES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
# A member with no deadline of its own stops waiting after this long (the Coalescer needs a finite time).
_NO_DEADLINE_WAIT_S = 24 * 3600.0
_TENSOR_FIELDS = tensor_pb2.TensorProto.DESCRIPTOR.fields
# Repeated scalar value fields (float_val, int64_val, string_val, ...); message-typed ones are never split.
_SCALAR_VALUE_FIELDS = frozenset(
    f.name for f in _TENSOR_FIELDS if f.name.endswith("_val") and f.type != FieldDescriptor.TYPE_MESSAGE
)
_COMPLEX = frozenset({types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128})  # two values per element

# (model, serialized model_spec, output_filter, input name): what must be equal for requests to merge.
Key = tuple[str, bytes, tuple[str, ...], str]
# forward(model, addresses, request bytes, request id, deadline): one routed Predict, retries included.
Forward = Callable[[str, tuple[str, ...], bytes, str, float | None], Awaitable[UpstreamReply]]


@dataclass(frozen=True, kw_only=True)
class PredictCoalescing:
    enabled: bool = True
    # Examples in one merged upstream Predict; a request larger than this still goes, alone.
    max_rows: int = 256
    # A serialized request larger than this goes alone and is not parsed: merging 256 KiB costs ~0.35 ms of the
    # event loop, about the ~0.3-0.6 ms of CPU a saved hop is worth.
    max_request_bytes: int = 256 << 10

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"coalesce max_rows must be at least 1, got {self.max_rows}")
        if self.max_request_bytes < 0:
            raise ValueError(f"coalesce max_request_bytes must be at least 0, got {self.max_request_bytes}")


@dataclass(frozen=True, eq=False)
class Coalescable:
    """A Predict that can be merged: its parsed form and where its examples are."""

    key: Key
    parsed: predict_pb2.PredictRequest
    input_name: str
    rows: int


def coalescable(model: str, request: bytes) -> Coalescable | None:
    """The request parsed, when it is an entry Predict that merging keeps intact; else None."""
    try:
        parsed = predict_pb2.PredictRequest.FromString(request)
    except Exception:  # protobuf's DecodeError has no stable import path; the entry will word the error
        return None
    inputs = parsed.inputs
    if len(inputs) != 1 or len(UnknownFieldSet(parsed)):
        return None
    ((name, tensor),) = inputs.items()
    if name not in INPUT_NAMES or tensor.dtype != types_pb2.DT_STRING:
        return None
    rows = len(tensor.string_val)
    shape = tensor.tensor_shape
    dims = shape.dim
    # dtype, tensor_shape and string_val and nothing else (no version_number, no stray encodings).
    if rows < 1 or len(dims) != 1 or dims[0].size != rows or dims[0].name or shape.unknown_rank:
        return None
    if len(tensor.ListFields()) != 3 or len(UnknownFieldSet(tensor)):
        return None
    key = (model, parsed.model_spec.SerializeToString(deterministic=True), tuple(parsed.output_filter), name)
    return Coalescable(key=key, parsed=parsed, input_name=name, rows=rows)


def merge_requests(members: Sequence[Coalescable]) -> bytes:
    """One PredictRequest with the members' examples concatenated in order (same spec, filter, input)."""
    first = members[0].parsed
    merged = predict_pb2.PredictRequest()
    merged.model_spec.CopyFrom(first.model_spec)
    merged.output_filter.extend(first.output_filter)
    tensor = merged.inputs[members[0].input_name]
    tensor.dtype = types_pb2.DT_STRING
    strings = tensor.string_val
    for member in members:
        strings.extend(member.parsed.inputs[member.input_name].string_val)
    tensor.tensor_shape.dim.add().size = len(strings)
    return merged.SerializeToString()


@dataclass(frozen=True)
class _RowSlicer:
    """How to cut one output tensor into row ranges."""

    name: str
    tensor: tensor_pb2.TensorProto
    field: str | None  # tensor_content, a *_val field, or None when the tensor holds no values
    per_row: int  # bytes or values per row; 0 with a broadcast single value
    broadcast: bool  # one value filling the whole shape (TF Serving's rule): every piece keeps it

    def fill(self, piece: tensor_pb2.TensorProto, start: int, rows: int) -> None:
        piece.dtype = self.tensor.dtype
        if self.tensor.version_number:
            piece.version_number = self.tensor.version_number
        piece.tensor_shape.CopyFrom(self.tensor.tensor_shape)
        piece.tensor_shape.dim[0].size = rows
        if self.field is None:
            return
        if self.field == "tensor_content":
            piece.tensor_content = self.tensor.tensor_content[start * self.per_row : (start + rows) * self.per_row]
            return
        values = getattr(self.tensor, self.field)
        chosen = values[:1] if self.broadcast else values[start * self.per_row : (start + rows) * self.per_row]
        getattr(piece, self.field).extend(chosen)


def _slicer(name: str, tensor: tensor_pb2.TensorProto, total: int) -> _RowSlicer | None:
    """None when the tensor is not ``total`` rows that can be cut apart."""
    shape = tensor.tensor_shape
    dims = shape.dim
    if shape.unknown_rank or not dims or dims[0].size != total or len(UnknownFieldSet(tensor)):
        return None
    row_elements = 1
    for dim in dims[1:]:
        if dim.size < 0:
            return None
        row_elements *= dim.size
    field = None
    for descriptor, _ in tensor.ListFields():
        if descriptor.name in ("dtype", "tensor_shape", "version_number"):
            continue
        if field is not None or (descriptor.name != "tensor_content" and descriptor.name not in _SCALAR_VALUE_FIELDS):
            return None  # two encodings at once, or message-typed values
        field = descriptor.name
    if field is None:
        return _RowSlicer(name, tensor, None, 0, False) if row_elements == 0 else None
    if field == "tensor_content":
        if tensor.dtype == types_pb2.DT_STRING:
            return None
        try:
            itemsize = numpy_dtype_for(tensor.dtype).itemsize
        except InvalidArgumentError:
            return None
        per_row = row_elements * itemsize
        if len(tensor.tensor_content) != total * per_row:
            return None
        return _RowSlicer(name, tensor, field, per_row, False)
    count = len(getattr(tensor, field))
    per_row = row_elements * (2 if tensor.dtype in _COMPLEX else 1)
    if count == total * per_row:
        return _RowSlicer(name, tensor, field, per_row, False)
    if count == 1 and tensor.dtype not in _COMPLEX:
        return _RowSlicer(name, tensor, field, 0, True)
    return None


def split_response(response: bytes, rows: Sequence[int]) -> list[bytes] | None:
    """The PredictResponse of a merged request cut into one response per member (``rows`` each, in order);
    None when some output's first dimension is not the rows of the merged request, or cannot be cut."""
    try:
        parsed = predict_pb2.PredictResponse.FromString(response)
    except Exception:  # not a PredictResponse: the members will ask alone
        return None
    if len(UnknownFieldSet(parsed)):
        return None
    total = sum(rows)
    slicers = []
    for name, tensor in parsed.outputs.items():
        slicer = _slicer(name, tensor, total)
        if slicer is None:
            return None
        slicers.append(slicer)
    pieces = []
    start = 0
    for count in rows:
        piece = predict_pb2.PredictResponse()
        if parsed.HasField("model_spec"):
            piece.model_spec.CopyFrom(parsed.model_spec)
        for slicer in slicers:
            slicer.fill(piece.outputs[slicer.name], start, count)
        pieces.append(piece.SerializeToString())
        start += count
    return pieces


@dataclass(frozen=True, eq=False)
class _Member:
    request: bytes  # as the client sent it: a member sent alone goes upstream byte-identical
    coalescable: Coalescable
    addresses: tuple[str, ...]
    request_id: str
    deadline: float | None  # on the coalescer's clock


Answer = UpstreamReply | Exception  # a member's own failure when the members had to be sent alone


class PredictCoalescer:
    """``forward`` has the signature and result of ``forward_one`` (one routed Predict, its retries included),
    with concurrent coalescable Predicts for the same key merged. Loop-affine."""

    def __init__(
        self,
        forward_one: Forward,
        config: PredictCoalescing,
        *,
        on_merged: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._forward_one = forward_one
        self._max_request_bytes = config.max_request_bytes
        self._clock = clock
        self._coalescer: Coalescer[Key, _Member, Answer] = Coalescer(
            CoalescerCalls(
                one=self._one,
                many=self._many,
                size=lambda member: member.coalescable.rows,
                expired=lambda key: RpcStatusError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while waiting for a coalesced Predict"
                ),
                cancelled=lambda key: RpcStatusError(
                    grpc.StatusCode.UNAVAILABLE, "coalesced Predict cancelled (proxy shutting down?)"
                ),
            ),
            max_size=config.max_rows,
            on_merged=None if on_merged is None else (lambda key, n: on_merged(key[0], n)),
            clock=clock,
        )

    async def forward(
        self, model: str, addresses: tuple[str, ...], request: bytes, request_id: str, deadline: float | None
    ) -> UpstreamReply:
        found = None if len(request) > self._max_request_bytes else coalescable(model, request)
        if found is None:
            return await self._forward_one(model, addresses, request, request_id, deadline)
        member = _Member(request, found, addresses, request_id, deadline)
        wait_until = deadline if deadline is not None else self._clock() + _NO_DEADLINE_WAIT_S
        answer = await self._coalescer.submit(found.key, member, wait_until)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _one(self, key: Key, member: _Member, wait_until: float) -> Answer:
        return await self._forward_one(key[0], member.addresses, member.request, member.request_id, member.deadline)

    async def _many(self, key: Key, members: Sequence[_Member], wait_until: float) -> list[Answer]:
        first = members[0]
        request_id = f"{first.request_id}+{len(members) - 1}"
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s merges %s", request_id, ",".join(m.request_id for m in members))
        deadlines = [m.deadline for m in members]
        deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
        merged = merge_requests([m.coalescable for m in members])
        try:
            reply = await self._forward_one(key[0], first.addresses, merged, request_id, deadline)
        except RpcStatusError as error:
            if error.code in SHARED_FAILURES:
                raise
            log.info(
                "request %s (%d merged Predicts) failed with %s: %s; sending each alone",
                request_id,
                len(members),
                error.code.name,
                error.message,
            )
            return await self._alone(key, members)
        pieces = split_response(reply.response, [m.coalescable.rows for m in members])
        if pieces is None:
            log.warning(
                "request %s: the merged Predict's response cannot be split by rows; sending each alone", request_id
            )
            return await self._alone(key, members)
        return [UpstreamReply(piece, reply.trailing) for piece in pieces]

    async def _alone(self, key: Key, members: Sequence[_Member]) -> list[Answer]:
        results = await asyncio.gather(*(self._one(key, m, math.inf) for m in members), return_exceptions=True)
        answers: list[Answer] = []
        for result in results:
            if not isinstance(result, UpstreamReply | Exception):
                raise result  # CancelledError and the like: not a member's own answer
            answers.append(result)
        return answers
