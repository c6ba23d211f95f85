"""Reading fields out of protobuf wire bytes without decoding the message (the writer side is ``proto_wire``).

For callers that need a few fields of a large or foreign message: the proxy reads the ``model_spec`` of every
request (decoding a whole PredictRequest copies every tensor), the PS reads table configs out of a Monolith
``saved_model.pb`` (whose messages we have no generated code for).

What is accepted: varints of at most 10 bytes, wire types 0 (varint), 1 (fixed64), 2 (length-delimited) and
5 (fixed32). Refused with WireFormatError, as protobuf refuses them: a truncated varint or field, a varint
longer than 10 bytes, field number 0, wire types 6 and 7. Groups (wire types 3 and 4) are refused too: the
messages read here are proto3 or proto2 without groups, so one is a sign of bytes that are not the message.
Unlike protobuf, a varint's 10th byte is not checked to fit 64 bits, and field numbers are not checked
against 2**29.

Only the fields that are looked at are checked: ``first_bytes`` stops at the field it returns, and the
payload of a length-delimited field is not looked inside.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.proto_wire import LENGTH_DELIMITED, VARINT

FIXED64 = 1
FIXED32 = 5

# (field number, wire type, value): an int for a varint; the raw bytes otherwise (a fixed-width field's
# little-endian bytes, a length-delimited field's payload).
Field = tuple[int, int, int | bytes]

_MAX_VARINT_SHIFT = 70  # 10 bytes of 7 bits


class WireFormatError(InvalidArgumentError):
    """Bytes that are not protobuf wire data; the message says what is wrong, callers add what was read."""


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """The base-128 varint at ``pos`` and the position after it."""
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise WireFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= _MAX_VARINT_SHIFT:
            raise WireFormatError("varint longer than 10 bytes")


def fields(buf: bytes) -> Iterator[Field]:
    """Each top-level field of the message ``buf``, in wire order (a repeated field once per occurrence).

    Lazy: bytes after the last field taken are not checked.
    """
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireFormatError("field number 0")
        value: int | bytes
        if wire_type == LENGTH_DELIMITED:
            size, pos = read_varint(buf, pos)
            value = buf[pos : pos + size]
            pos += size
        elif wire_type == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire_type == FIXED64:
            value = buf[pos : pos + 8]
            pos += 8
        elif wire_type == FIXED32:
            value = buf[pos : pos + 4]
            pos += 4
        else:
            raise WireFormatError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise WireFormatError("field runs past the end of its message")
        yield number, wire_type, value


def first_bytes(buf: bytes, number: int) -> bytes | None:
    """The payload of the first occurrence of length-delimited field ``number``, or None.

    Scanning stops there. Protobuf would merge every occurrence of a message field; serializers write one,
    so taking the first keeps the cost independent of what follows (the tensors of a PredictRequest).
    """
    # The usual case, checked without a generator: the field is first on the wire with a one-byte tag and length.
    if len(buf) >= 2 and buf[0] == (number << 3 | LENGTH_DELIMITED) < 0x80:
        size = buf[1]
        if size < 0x80 and size + 2 <= len(buf):
            return buf[2 : size + 2]
    for field, wire_type, value in fields(buf):
        if field == number and wire_type == LENGTH_DELIMITED:
            assert isinstance(value, bytes)
            return value
    return None


def repeated_bytes(buf: bytes, number: int) -> Iterator[bytes]:
    """The payload of each occurrence of length-delimited field ``number`` (a repeated string or message)."""
    for field, wire_type, value in fields(buf):
        if field == number and wire_type == LENGTH_DELIMITED:
            assert isinstance(value, bytes)
            yield value


def last_varint(buf: bytes, number: int, default: int) -> int:
    """Varint field ``number`` as an unsigned int (the last occurrence wins, as in protobuf), else ``default``.

    A negative int32/int64 reads as its 64-bit two's complement.
    """
    result = default
    for field, wire_type, value in fields(buf):
        if field == number and wire_type == VARINT:
            assert isinstance(value, int)
            result = value
    return result


def last_float(buf: bytes, number: int, default: float) -> float:
    """``float`` (fixed32) field ``number`` (the last occurrence wins), else ``default``."""
    result = default
    for field, wire_type, value in fields(buf):
        if field == number and wire_type == FIXED32:
            assert isinstance(value, bytes)
            result = struct.unpack("<f", value)[0]
    return result
