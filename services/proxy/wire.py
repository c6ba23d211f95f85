"""Reading just the routing fields out of a serialized TF Serving request, without decoding it.

The proxy forwards request bytes untouched; all it needs is ``model_spec`` (field 1 of PredictRequest,
GetModelMetadataRequest, GetModelStatusRequest, ClassificationRequest and RegressionRequest; field 1 of the
first ``tasks`` entry of MultiInferenceRequest). Serializers write field 1 first, so finding it costs a few
varint reads, where decoding a whole PredictRequest copies every tensor.
"""

from __future__ import annotations

from collections.abc import Iterator

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.proto_gen.tensorflow_serving.apis import model_pb2

_VARINT = 0
_FIXED64 = 1
_LENGTH_DELIMITED = 2
_FIXED32 = 5


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise InvalidArgumentError("malformed request: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise InvalidArgumentError("malformed request: varint too long")


def _length_delimited(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """Yields ``(field number, payload)`` of each top-level length-delimited field, skipping the others.

    Raises InvalidArgumentError on bytes that are not a protobuf message.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise InvalidArgumentError("malformed request: field number 0")
        if wire_type == _VARINT:
            _, pos = _varint(buf, pos)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise InvalidArgumentError("malformed request: field runs past the end")
            yield field, buf[pos : pos + size]
            pos += size
        else:
            raise InvalidArgumentError(f"malformed request: unsupported wire type {wire_type}")
        if pos > end:
            raise InvalidArgumentError("malformed request: field runs past the end")


def first_field(buf: bytes, number: int) -> bytes | None:
    """The payload of the first top-level occurrence of length-delimited field ``number``, or None.

    Scanning stops there: serializers write a message field once, so a request whose ``model_spec``
    is split over several occurrences (legal protobuf, produced by no serializer) is routed by the first.
    That keeps the cost at ~1-3 us whatever the tensor sizes (a full PredictRequest parse of 0.5 MB
    takes ~40 us).
    """
    # Fast path, the usual case: the field is the first on the wire with a one-byte tag and length.
    tag = number << 3 | _LENGTH_DELIMITED
    if tag < 0x80 and len(buf) >= 2 and buf[0] == tag and buf[1] < 0x80 and 2 + buf[1] <= len(buf):
        return buf[2 : 2 + buf[1]]
    for field, payload in _length_delimited(buf):
        if field == number:
            return payload
    return None


def model_spec_bytes(request: bytes, *, multi_inference: bool = False) -> bytes:
    """The serialized ModelSpec of a serialized request (empty when absent).

    ``multi_inference``: the request is a MultiInferenceRequest; its first task's spec is used (TF Serving
    requires every task to name the same model).
    """
    container: bytes | None = request
    if multi_inference:
        container = first_field(request, 1)
    payload = None if container is None else first_field(container, 1)
    return b"" if payload is None else payload


def _parse_spec(payload: bytes) -> model_pb2.ModelSpec:
    try:
        return model_pb2.ModelSpec.FromString(payload)
    except Exception as exc:  # protobuf's DecodeError has no stable import path across backends
        raise InvalidArgumentError(f"malformed model_spec: {exc}") from None


def read_model_spec(request: bytes, *, multi_inference: bool = False) -> model_pb2.ModelSpec:
    """The ModelSpec of a serialized request (an empty one when absent)."""
    return _parse_spec(model_spec_bytes(request, multi_inference=multi_inference))


class ModelNames:
    """``model_spec.name`` of serialized requests, memoized by the spec's bytes.

    Clients send the same few specs over and over, so a dict hit replaces a protobuf parse per request.
    The memo is cleared when it reaches ``max_entries``, so random specs cannot grow it without bound.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max_entries = max_entries
        self._names: dict[bytes, str] = {}

    def __call__(self, request: bytes, *, multi_inference: bool = False) -> str:
        payload = model_spec_bytes(request, multi_inference=multi_inference)
        name = self._names.get(payload)
        if name is None:
            name = _parse_spec(payload).name
            if len(self._names) >= self._max_entries:
                self._names.clear()
            self._names[payload] = name
        return name
