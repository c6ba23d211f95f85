"""Writing the few TF Serving messages of the lookup hot path straight to protobuf wire bytes.

The entry -> PS lookup request and the PS's lookup response always have the same simple shape: a
``ModelSpec`` and dense tensors in ``tensor_content``. Building them as protobuf messages costs a map entry,
shape dims and a copy per tensor, and serializing copies every tensor again (a 4,096 x 32 float output is
512 KiB); writing the bytes directly costs a few small joins and one copy of each tensor. The bytes are the
ones protobuf writes for the same message (tests/unit/test_proto_wire.py parses them back and compares), so
the peer sees an ordinary message.

Field numbers: ModelSpec.name = 1, .version = 2 (google.protobuf.Int64Value.value = 1), .signature_name = 3;
TensorProto.dtype = 1, .tensor_shape = 2 (TensorShapeProto.dim = 2, TensorShapeProto.Dim.size = 1),
.tensor_content = 4; a map entry has key = 1, value = 2.
"""

from __future__ import annotations

from collections.abc import Sequence

VARINT = 0
LENGTH_DELIMITED = 2


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int (the only kind written here: sizes, lengths, versions)."""
    if value < 0:
        raise ValueError(f"varint of a negative value {value}")
    # Sizes and lengths on the hot path fit 1-3 bytes; build those directly (this runs ~20 times a request).
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field: int, payload: bytes) -> bytes:
    """Field ``field`` holding ``payload`` (a string, bytes or an embedded message)."""
    return tag(field, LENGTH_DELIMITED) + varint(len(payload)) + payload


_NAME = 1
_VERSION = 2
_SIGNATURE = 3
_DTYPE = 1
_SHAPE = 2
_DIM = 2
_DIM_SIZE = 1
_CONTENT_TAG = tag(4, LENGTH_DELIMITED)


def model_spec(name: str, version: int | None, signature_name: str) -> bytes:
    """A serialized ModelSpec. ``version`` None leaves the version out; 0 writes an explicitly set 0."""
    out = length_delimited(_NAME, name.encode()) if name else b""
    if version is not None:
        # proto3 leaves a zero value out, but the Int64Value wrapper itself is still present.
        out += length_delimited(_VERSION, tag(1, VARINT) + varint(version) if version else b"")
    if signature_name:
        out += length_delimited(_SIGNATURE, signature_name.encode())
    return out


def tensor_head(datatype: int, shape: Sequence[int], content_bytes: int) -> bytes:
    """A serialized TensorProto up to its ``tensor_content``: append exactly ``content_bytes`` raw bytes
    (little-endian elements) to complete it. ``content_bytes`` 0 gives a complete tensor without content."""
    dims = b"".join(length_delimited(_DIM, tag(_DIM_SIZE, VARINT) + varint(size) if size else b"") for size in shape)
    head = tag(_DTYPE, VARINT) + varint(datatype) if datatype else b""
    head += length_delimited(_SHAPE, dims)
    if content_bytes:
        head += _CONTENT_TAG + varint(content_bytes)
    return head


def map_entry_head(field: int, key: bytes, value_bytes: int) -> bytes:
    """A ``map<string, Message>`` entry of field ``field`` up to its value: append the ``value_bytes``
    bytes of the serialized value to complete it."""
    key_part = length_delimited(1, key)
    value_tag = tag(2, LENGTH_DELIMITED) + varint(value_bytes)
    return tag(field, LENGTH_DELIMITED) + varint(len(key_part) + len(value_tag) + value_bytes) + key_part + value_tag
