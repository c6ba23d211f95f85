"""The shared protobuf wire reader: varints, each wire type, skipping, and refusing what is not wire data."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.proto_read import (
    FIXED32,
    FIXED64,
    WireFormatError,
    fields,
    first_bytes,
    last_float,
    last_varint,
    read_varint,
    repeated_bytes,
)
from monolith_serving.core.proto_wire import LENGTH_DELIMITED, VARINT, length_delimited, tag, varint
from monolith_serving.proto_gen.monolith.hash_table import entry_dump_pb2
from monolith_serving.ps.serving_graph import graph_table_layouts

# --- varints ---------------------------------------------------------------------------------------------------


@given(st.integers(0, 2**64 - 1), st.binary(max_size=3), st.binary(max_size=3))
def test_varint_round_trips_the_writer_at_any_offset(value: int, before: bytes, after: bytes) -> None:
    encoded = varint(value)
    assert read_varint(before + encoded + after, len(before)) == (value, len(before) + len(encoded))


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"\x00", 0),
        (b"\x7f", 127),
        (b"\x80\x01", 128),
        (b"\xac\x02", 300),
        (b"\xff" * 8 + b"\x7f", 2**63 - 1),  # 9 bytes
        (b"\xff" * 9 + b"\x01", 2**64 - 1),  # 10 bytes: int64 -1 as protobuf writes it
        (b"\x80\x80\x00", 0),  # a padded encoding of 0 is still a varint (protobuf reads it too)
        (b"\xff" * 9 + b"\x7f", 2**70 - 1),  # the 10th byte's bits past 64 are not checked (see the module doc)
    ],
)
def test_varint_values(raw: bytes, value: int) -> None:
    assert read_varint(raw, 0) == (value, len(raw))
    assert read_varint(memoryview(bytearray(raw)), 0) == (value, len(raw))


@pytest.mark.parametrize(
    ("raw", "pos", "message"),
    [
        (b"", 0, "truncated varint"),
        (b"\x05", 1, "truncated varint"),  # reading at the end
        (b"\x80", 0, "truncated varint"),
        (b"\xff" * 9, 0, "truncated varint"),
        (b"\xff" * 10 + b"\x01", 0, "varint longer than 10 bytes"),
        (b"\x80" * 10 + b"\x00", 0, "varint longer than 10 bytes"),  # too long even though the value is 0
    ],
)
def test_truncated_and_overlong_varints_are_refused(raw: bytes, pos: int, message: str) -> None:
    with pytest.raises(WireFormatError, match=f"^{message}$"):
        read_varint(raw, pos)


def test_wire_errors_are_invalid_argument() -> None:
    assert issubclass(WireFormatError, InvalidArgumentError)


# --- fields -----------------------------------------------------------------------------------------------------


def test_each_wire_type_as_protobuf_writes_it() -> None:
    # EntryDump { sfixed64 id = 1; repeated float num = 2; EntryOption opt = 3; int64 last_update_ts_sec = 4; }
    dump = entry_dump_pb2.EntryDump(id=-5, num=[1.5, -2.0], last_update_ts_sec=-1)
    dump.opt.SetInParent()
    raw = dump.SerializeToString()
    assert list(fields(raw)) == [
        (1, FIXED64, struct.pack("<q", -5)),
        (2, FIXED32, struct.pack("<f", 1.5)),  # proto2 `repeated float`: one tag per value, not packed
        (2, FIXED32, struct.pack("<f", -2.0)),
        (3, LENGTH_DELIMITED, b""),
        (4, VARINT, 2**64 - 1),  # a negative int64: 10 bytes, its two's complement
    ]
    assert last_float(raw, 2, 0.0) == -2.0
    assert last_varint(raw, 4, 0) == 2**64 - 1
    assert first_bytes(raw, 3) == b""


_FIELD_NUMBERS = st.integers(1, 2**29 - 1)
_FIELD = st.one_of(
    st.tuples(_FIELD_NUMBERS, st.just(VARINT), st.integers(0, 2**64 - 1)),
    st.tuples(_FIELD_NUMBERS, st.just(FIXED64), st.binary(min_size=8, max_size=8)),
    st.tuples(_FIELD_NUMBERS, st.just(FIXED32), st.binary(min_size=4, max_size=4)),
    st.tuples(_FIELD_NUMBERS, st.just(LENGTH_DELIMITED), st.binary(max_size=300)),
)


def _encode(field: tuple[int, int, int | bytes]) -> bytes:
    number, wire_type, value = field
    if wire_type == VARINT:
        assert isinstance(value, int)
        return tag(number, VARINT) + varint(value)
    assert isinstance(value, bytes)
    if wire_type == LENGTH_DELIMITED:
        return length_delimited(number, value)
    return tag(number, wire_type) + value


@given(st.lists(_FIELD, max_size=8))
def test_fields_reads_back_what_was_written(written: list[tuple[int, int, int | bytes]]) -> None:
    assert list(fields(b"".join(map(_encode, written)))) == written


@given(st.lists(_FIELD, max_size=6), st.binary(max_size=200), st.integers(1, 40))
def test_first_bytes_skips_other_fields_and_other_wire_types(
    others: list[tuple[int, int, int | bytes]], payload: bytes, number: int
) -> None:
    # The same number with another wire type is an unknown field to protobuf, not the one sought.
    before = [f for f in others if f[0] != number or f[1] != LENGTH_DELIMITED]
    raw = b"".join(map(_encode, before)) + length_delimited(number, payload) + length_delimited(number, b"second")
    assert first_bytes(raw, number) == payload
    assert list(repeated_bytes(raw, number)) == [payload, b"second"]
    assert first_bytes(b"".join(map(_encode, before)), number) is None


def test_first_bytes_fast_path_and_scan_agree() -> None:
    spec = length_delimited(1, b"name")
    assert first_bytes(spec + length_delimited(2, b"x"), 1) == b"name"  # first on the wire: no scan
    assert first_bytes(tag(5, FIXED32) + b"\0" * 4 + tag(6, FIXED64) + b"\0" * 8 + spec, 1) == b"name"
    assert first_bytes(length_delimited(1, b"y" * 200), 1) == b"y" * 200  # a two-byte length
    assert first_bytes(length_delimited(16, b"z"), 16) == b"z"  # a two-byte tag


def test_first_bytes_does_not_look_past_the_field_it_returns() -> None:
    assert first_bytes(length_delimited(1, b"a") + b"\xff", 1) == b"a"
    assert first_bytes(tag(2, VARINT) + b"\x01" + length_delimited(1, b"a") + b"\x0b", 1) == b"a"


def test_last_varint_and_last_float_take_the_last_occurrence_or_the_default() -> None:
    raw = tag(7, VARINT) + varint(3) + tag(7, FIXED32) + struct.pack("<f", 9.0) + tag(7, VARINT) + varint(4)
    raw += tag(2, FIXED32) + struct.pack("<f", 0.25) + tag(2, VARINT) + varint(1) + tag(2, FIXED32)
    raw += struct.pack("<f", -0.5)
    assert last_varint(raw, 7, 0) == 4
    assert last_varint(raw, 8, 11) == 11
    assert last_float(raw, 2, 1.0) == -0.5
    assert last_float(raw, 7, 1.0) == 9.0
    assert last_float(raw, 3, 0.1) == 0.1


# --- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x01", "field number 0"),
        (tag(1, 3) + tag(1, 4), "unsupported wire type 3"),  # a group: no message read here has one
        (tag(1, 4), "unsupported wire type 4"),
        (tag(1, 6) + b"\0", "unsupported wire type 6"),
        (tag(1, 7) + b"\0", "unsupported wire type 7"),
        (tag(1, VARINT), "truncated varint"),
        (tag(1, VARINT) + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
        (tag(1, LENGTH_DELIMITED), "truncated varint"),
        (b"\x0a\x05ab", "field runs past the end of its message"),
        (tag(1, FIXED32) + b"\0" * 3, "field runs past the end of its message"),
        (tag(1, FIXED64) + b"\0" * 7, "field runs past the end of its message"),
        (b"\x80", "truncated varint"),  # a truncated tag
    ],
)
def test_bytes_that_are_not_wire_data_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(WireFormatError, match=f"^{message}$"):
        list(fields(raw))
    with pytest.raises(WireFormatError, match=f"^{message}$"):
        first_bytes(raw, 9)


def test_unknown_fields_before_the_spec_are_still_checked() -> None:
    # Scanning to the field sought reads every field before it, so damage there is refused, not skipped.
    with pytest.raises(WireFormatError):
        first_bytes(tag(3, FIXED64) + b"\0" * 4, 1)


def test_the_serving_graph_reader_refuses_field_number_0() -> None:
    # The PS's own walker used to skip field 0 (protobuf refuses it); the shared reader refuses it everywhere.
    with pytest.raises(WireFormatError, match="field number 0"):
        graph_table_layouts(b"\x00\x00", 0)
