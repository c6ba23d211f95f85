"""The input files of Monolith's ``tfs_client``, read as it reads them, so its users' files work unchanged.

A *data file* is a sequence of records; each record is an optional header, then the length of the message as
a little-endian uint64, then the serialized message (an ``Instance`` or an ``ExampleBatch``). Which header comes
first is told by four flags (``RecordHeader``), exactly as tfs_client's ``read_header`` decides:

- ``lagrangex_header``: 8 bytes, skipped; the other three flags are then ignored.
- ``kafka_dump_prefix``: a uint64; when it is 0 a second uint64 follows and the first value is dropped, else
  the value is the size of the sort id that follows (``has_sort_id`` then reads no size of its own).
- ``has_sort_id``: a uint64 size (unless the kafka prefix gave it), then that many bytes of sort id, skipped.
- ``kafka_dump``: 8 bytes, skipped.

An ExampleBatch may also be a text-format file (``--file_type pbtxt``). ``example_batch_to_instances`` turns one
into the Instances tfs_client's ``example_batch_to_instance`` input sends. Every error is an
InvalidArgumentError or NotFoundError naming the file (and the record), never a struct or decode error.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from monolith_serving.client.text_sniff import decoded_if_text
from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.fid_bits import FID_V1_SLOT_SHIFT, FID_V2_HASH_MASK, FID_V2_SLOT_SHIFT
from monolith_serving.proto_gen.idl.matrix.proto import example_pb2 as monolith_example_pb2
from monolith_serving.proto_gen.idl.matrix.proto import proto_parser_pb2

FILE_TYPES = ("pb", "pbtxt")
# tfs_client's profile reads at most this many files of --profile_data_dir.
MAX_PROFILE_FILES = 500
LABEL_LIST = "__LABEL__"
LINE_ID_LIST = "__LINE_ID__"
_U64 = struct.Struct("<Q")
_FIXED_HEADER_BYTES = 8  # the lagrangex header and the kafka dump field


@dataclass(frozen=True)
class RecordHeader:
    """tfs_client's four header flags (all false: a record is its length and its message)."""

    lagrangex_header: bool = False
    kafka_dump_prefix: bool = False
    has_sort_id: bool = False
    kafka_dump: bool = False


class _Cursor:
    """Reads a data file front to back; a short read is an error naming the file, the record and the field."""

    def __init__(self, data: bytes, path: Path) -> None:
        self._data = data
        self._path = path
        self._offset = 0
        self.record = 0  # 1-based number of the record being read

    @property
    def at_end(self) -> bool:
        return self._offset >= len(self._data)

    def take(self, size: int, what: str) -> bytes:
        left = len(self._data) - self._offset
        if size > left:
            raise InvalidArgumentError(
                f"input file {str(self._path)!r}: record {self.record}: {what} needs {size} bytes but only {left} "
                f"are left{_header_hint(self._data)}"
            )
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def u64(self, what: str) -> int:
        (value,) = _U64.unpack(self.take(_U64.size, what))
        return int(value)


def _header_hint(data: bytes) -> str:
    """Why lengths may not add up: a text file read as binary, or header flags that do not match the file."""
    if decoded_if_text(data) is not None:
        return " (the file looks like text: add --file_type pbtxt)"
    return " (do --lagrangex_header, --kafka_dump_prefix, --has_sort_id and --kafka_dump match how it was written?)"


def _skip_header(cursor: _Cursor, header: RecordHeader) -> None:
    if header.lagrangex_header:
        cursor.take(_FIXED_HEADER_BYTES, "the lagrangex header")
        return
    sort_id_size = 0
    if header.kafka_dump_prefix:
        size = cursor.u64("the kafka dump prefix")
        if size == 0:
            cursor.u64("the kafka dump prefix")
        else:
            sort_id_size = size
    if header.has_sort_id:
        if sort_id_size == 0:
            sort_id_size = cursor.u64("the sort id size")
        cursor.take(sort_id_size, "the sort id")
    if header.kafka_dump:
        cursor.take(_FIXED_HEADER_BYTES, "the kafka dump header")


def read_records(data: bytes, header: RecordHeader, count: int, path: Path, *, count_flag: str = "") -> list[bytes]:
    """The first ``count`` messages of a data file's bytes; an error (naming ``count_flag``, the flag that asked
    for ``count``, if any) when it holds fewer."""
    cursor = _Cursor(data, path)
    messages = []
    for number in range(1, count + 1):
        if cursor.at_end:
            asked = f" ({count_flag} {count})" if count_flag else ""
            raise InvalidArgumentError(f"input file {str(path)!r} holds {number - 1} records, {count} needed{asked}")
        cursor.record = number
        _skip_header(cursor, header)
        size = cursor.u64("the message length")
        messages.append(cursor.take(size, "the message"))
    return messages


def read_file_bytes(path: Path, what: str = "input file") -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise NotFoundError(f"{what} {str(path)!r}: {error.strerror}") from error


def read_instances(path: Path, count: int, header: RecordHeader) -> list[bytes]:
    """``count`` serialized Instances from a data file (tfs_client's ``--input_type instance``), each checked."""
    data = read_file_bytes(path)
    blobs = read_records(data, header, count, path, count_flag="--batch_size")
    for number, blob in enumerate(blobs, start=1):
        try:
            proto_parser_pb2.Instance.FromString(blob)
        except DecodeError as error:
            raise InvalidArgumentError(
                f"input file {str(path)!r}: record {number} is not an Instance ({error}){_header_hint(data)}"
            ) from error
    return blobs


def read_example_batch(path: Path, file_type: str, header: RecordHeader) -> monolith_example_pb2.ExampleBatch:
    """The ExampleBatch in ``path``: the first record of a data file (``pb``) or a text-format file (``pbtxt``)."""
    data = read_file_bytes(path)
    if file_type == "pbtxt":
        return _text_example_batch(data, path)
    if file_type != "pb":
        raise InvalidArgumentError(f"file type must be one of {', '.join(FILE_TYPES)}, got {file_type!r}")
    (blob,) = read_records(data, header, 1, path)
    try:
        return monolith_example_pb2.ExampleBatch.FromString(blob)
    except DecodeError as error:
        raise InvalidArgumentError(
            f"input file {str(path)!r}: record 1 is not an ExampleBatch ({error}){_header_hint(data)}"
        ) from error


def _text_example_batch(data: bytes, path: Path) -> monolith_example_pb2.ExampleBatch:
    try:
        return text_format.Parse(data.decode("utf-8"), monolith_example_pb2.ExampleBatch())
    except UnicodeDecodeError as error:
        raise InvalidArgumentError(
            f"input file {str(path)!r}: not a text-format ExampleBatch (not UTF-8 text; for a binary file drop "
            "--file_type pbtxt)"
        ) from error
    except text_format.ParseError as error:
        raise InvalidArgumentError(f"input file {str(path)!r}: not a text-format ExampleBatch: {error}") from error


def profile_data_files(folder: Path) -> list[Path]:
    """The files a load test reads from ``folder`` (sorted, at most MAX_PROFILE_FILES); none when it is missing."""
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise InvalidArgumentError(f"--profile_data_dir {str(folder)!r} is not a folder")
    try:
        files = sorted(path for path in folder.iterdir() if path.is_file())
    except OSError as error:
        raise NotFoundError(f"--profile_data_dir {str(folder)!r}: {error.strerror}") from error
    return files[:MAX_PROFILE_FILES]


def _feature_of(named: monolith_example_pb2.NamedFeatureList, row: int, path: Path) -> monolith_example_pb2.Feature:
    """Example ``row``'s Feature of a list: a SHARED list's only one, an INDIVIDUAL list's ``row``-th."""
    index = 0 if named.type == monolith_example_pb2.SHARED else row
    if index >= len(named.feature):
        raise InvalidArgumentError(
            f"input file {str(path)!r}: list {named.name!r} has {len(named.feature)} features, "
            f"example {row} needs one (batch_size and the lists disagree)"
        )
    return named.feature[index]


def _v1_as_v2(fids: Sequence[int]) -> list[int]:
    # As tfs_client converts: the slot of the list's first fid, each fid's low 48 bits.
    slot = fids[0] >> FID_V1_SLOT_SHIFT
    return [(slot << FID_V2_SLOT_SHIFT) | (fid & FID_V2_HASH_MASK) for fid in fids]


def _add_feature(instance: proto_parser_pb2.Instance, name: str, feature: monolith_example_pb2.Feature) -> None:
    """The first non-empty list of ``feature`` (tfs_client's order) as a named Instance feature; none if empty."""
    if feature.fid_v1_list.value:
        instance.feature.add(name=name, fid=_v1_as_v2(feature.fid_v1_list.value))
    elif feature.fid_v2_list.value:
        instance.feature.add(name=name, fid=feature.fid_v2_list.value)
    elif feature.float_list.value:
        instance.feature.add(name=name, float_value=feature.float_list.value)
    elif feature.double_list.value:
        instance.feature.add(name=name, float_value=feature.double_list.value)
    elif feature.int64_list.value:
        instance.feature.add(name=name, int64_value=feature.int64_list.value)
    elif feature.bytes_list.value:
        instance.feature.add(name=name, bytes_value=feature.bytes_list.value)


def example_batch_to_instances(batch: monolith_example_pb2.ExampleBatch, path: Path) -> list[bytes]:
    """One serialized Instance per example, as tfs_client's ``example_batch_to_instance`` builds them:
    ``__LABEL__`` becomes ``label``, ``__LINE_ID__`` (a serialized LineId) ``line_id``, every other list a
    named ``feature`` (v1 fids converted to v2)."""
    instances = []
    for row in range(batch.batch_size):
        instance = proto_parser_pb2.Instance()
        for named in batch.named_feature_list:
            feature = _feature_of(named, row, path)
            if named.name == LABEL_LIST:
                instance.label.extend(feature.float_list.value)
            elif named.name == LINE_ID_LIST:
                _set_line_id(instance, feature, row, path)
            else:
                _add_feature(instance, named.name, feature)
        instances.append(instance.SerializeToString())
    return instances


def _set_line_id(
    instance: proto_parser_pb2.Instance, feature: monolith_example_pb2.Feature, row: int, path: Path
) -> None:
    where = f"input file {str(path)!r}: example {row}: {LINE_ID_LIST}"
    if not feature.bytes_list.value:
        raise InvalidArgumentError(f"{where} needs a bytes_list holding a serialized LineId")
    try:
        instance.line_id.ParseFromString(feature.bytes_list.value[0])
    except DecodeError as error:
        raise InvalidArgumentError(f"{where} is not a serialized LineId ({error})") from error
