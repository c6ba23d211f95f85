from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.tfrecord import (
    TFRecordCorruptError,
    TFRecordWriter,
    crc32c,
    frame_record,
    frame_uniform_records,
    iter_records,
    masked_crc32c,
    read_records,
    write_records,
)


def _slow_crc32c(data: bytes) -> int:
    """Bitwise reference CRC32C (reflected Castagnoli polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _ref_masked(data: bytes) -> int:
    crc = _slow_crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % (1 << 32)


def _ref_frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _ref_masked(length)) + data + struct.pack("<I", _ref_masked(data))


RECORDS = [b"", b"a", b"hello world", bytes(range(256)) * 5, b"\x00" * 17]


def test_crc_matches_reference() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the published CRC-32C check value
    for data in RECORDS:
        assert crc32c(data) == _slow_crc32c(data)
        assert masked_crc32c(data) == _ref_masked(data)


def test_frame_layout_matches_reference() -> None:
    for data in RECORDS:
        assert frame_record(data) == _ref_frame(data)


def test_frame_uniform_records_equals_per_record_framing() -> None:
    rng = np.random.default_rng(1)
    payload = rng.integers(0, 256, size=(9, 13), dtype=np.uint8)
    framed = frame_uniform_records(payload)
    assert framed.tobytes() == b"".join(_ref_frame(row.tobytes()) for row in payload)
    assert frame_uniform_records(np.empty((0, 5), dtype=np.uint8)).shape == (0, 21)


@pytest.mark.parametrize("window_size", [16, 64, 1 << 20])
def test_round_trip(tmp_path: Path, window_size: int) -> None:
    path = tmp_path / "r.tfrecord"
    write_records(path, RECORDS * 3)
    assert path.read_bytes() == b"".join(_ref_frame(r) for r in RECORDS * 3)
    assert list(iter_records(path, window_size=window_size)) == RECORDS * 3


def test_file_object_source() -> None:
    stream = io.BytesIO(b"".join(_ref_frame(r) for r in RECORDS))
    assert list(iter_records(stream)) == RECORDS


def test_empty_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert read_records(path) == []


def _offsets(records: list[bytes]) -> list[int]:
    out, pos = [], 0
    for r in records:
        out.append(pos)
        pos += len(r) + 16
    return out


def _corrupt(path: Path, index: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[index] ^= 0x40
    path.write_bytes(bytes(raw))


# Position of the flipped byte relative to the record start (n = data length).
_FLIPS: dict[str, tuple[Callable[[int], int], str]] = {
    "data": (lambda n: 12 + n // 2, "data CRC"),
    "length_crc": (lambda n: 9, "length CRC"),
    "length": (lambda n: 1, "length CRC"),
    "data_crc": (lambda n: 12 + n + 2, "data CRC"),
}


@pytest.mark.parametrize("field", sorted(_FLIPS))
def test_corrupt_byte_names_file_and_offset(tmp_path: Path, field: str) -> None:
    path = tmp_path / "c.tfrecord"
    write_records(path, RECORDS)
    offsets = _offsets(RECORDS)
    bad = 3  # a record in the middle
    position, reason = _FLIPS[field]
    _corrupt(path, offsets[bad] + position(len(RECORDS[bad])))
    with pytest.raises(TFRecordCorruptError) as info:
        read_records(path)
    assert info.value.offset == offsets[bad]
    assert str(path) in str(info.value)
    assert f"offset {offsets[bad]}" in str(info.value)
    assert reason in str(info.value)
    assert isinstance(info.value, InvalidArgumentError)


def test_verify_crc_false_returns_corrupt_data(tmp_path: Path) -> None:
    path = tmp_path / "c.tfrecord"
    write_records(path, [b"abcdef"])
    _corrupt(path, 12)
    assert read_records(path, verify_crc=False) == [bytes([ord("a") ^ 0x40]) + b"bcdef"]


@pytest.mark.parametrize("keep", [1, 11, 12, 20])
def test_truncated_file_names_offset(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "t.tfrecord"
    records = [b"x" * 10, b"y" * 30]
    write_records(path, records)
    start = _offsets(records)[1]
    path.write_bytes(path.read_bytes()[: start + keep])
    with pytest.raises(TFRecordCorruptError) as info:
        read_records(path)
    assert info.value.offset == start
    assert "truncated" in str(info.value)


def test_huge_length_without_crc_check_is_truncation(tmp_path: Path) -> None:
    path = tmp_path / "h.tfrecord"
    header = struct.pack("<Q", 1 << 60)
    path.write_bytes(header + struct.pack("<I", masked_crc32c(header)) + b"abc")
    with pytest.raises(TFRecordCorruptError, match="truncated"):
        read_records(path, verify_crc=False)


def test_writer_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "w.tfrecord"
    with TFRecordWriter(path) as writer:
        writer.write(b"one")
        assert not path.exists()
    assert read_records(path) == [b"one"]

    with pytest.raises(RuntimeError), TFRecordWriter(path) as writer:
        writer.write(b"two")
        raise RuntimeError("boom")
    assert read_records(path) == [b"one"]  # old content untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.tfrecord"]  # no temp file left behind


def test_write_after_close_fails(tmp_path: Path) -> None:
    writer = TFRecordWriter(tmp_path / "x")
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"a")
