"""tfs_client's input files: data files framed as Monolith writes them (``data_gen_utils.gen_random_data_file``: the
header, the length as a little-endian uint64, the message), text ExampleBatches, and the ExampleBatch -> Instance
conversion of ``--input_type example_batch_to_instance``. The framing here is written out by hand from those
facts, not with the reader's code."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from google.protobuf import text_format

from monolith_serving.client.tfs_client_files import (
    RecordHeader,
    example_batch_to_instances,
    profile_data_files,
    read_example_batch,
    read_instances,
    read_records,
)
from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.proto_gen.idl.matrix.proto import example_pb2, line_id_pb2, proto_parser_pb2

MESSAGES = [b"first message", b"", b"third"]


def u64(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def framed(messages: list[bytes], header: bytes) -> bytes:
    return b"".join(header + u64(len(message)) + message for message in messages)


@pytest.mark.parametrize(
    ("header", "flags"),
    [
        (b"", RecordHeader()),
        # data_gen_utils.lg_header: 8 bytes (a hashed source, or zeros); the other flags are then not read.
        (b"\x00\x07\x08\x09\x00\x00\x00\x00", RecordHeader(lagrangex_header=True, has_sort_id=True)),
        (u64(3) + b"sid", RecordHeader(has_sort_id=True)),
        # data_gen_utils.sort_header(sort_id, kafka_dump): two zero uint64s; and with the kafka prefix, three.
        (u64(0, 0), RecordHeader(has_sort_id=True, kafka_dump=True)),
        (u64(0, 0, 0), RecordHeader(has_sort_id=True, kafka_dump_prefix=True)),
        # A non-zero kafka prefix is the size of the sort id; has_sort_id then reads no size of its own.
        (u64(2) + b"id", RecordHeader(has_sort_id=True, kafka_dump_prefix=True)),
        (u64(0, 5), RecordHeader(kafka_dump_prefix=True)),
        (b"k" * 8, RecordHeader(kafka_dump=True)),
    ],
    ids=["none", "lagrangex", "sort_id", "sort_id+kafka_dump", "kafka_prefix+sort_id", "prefix_sized", "prefix", "kd"],
)
def test_records_are_read_behind_every_header(header: bytes, flags: RecordHeader, tmp_path: Path) -> None:
    data = framed(MESSAGES, header)
    assert read_records(data, flags, 3, tmp_path / "f") == MESSAGES
    assert read_records(data, flags, 1, tmp_path / "f") == MESSAGES[:1]


def test_a_file_with_fewer_records_than_asked_names_the_counts(tmp_path: Path) -> None:
    path = tmp_path / "inst.pb"
    instance = proto_parser_pb2.Instance(fid=[1 << 54 | 5]).SerializeToString()
    path.write_bytes(framed([instance, instance], b""))
    assert read_instances(path, 2, RecordHeader()) == [instance, instance]
    with pytest.raises(InvalidArgumentError, match=r"'.*inst\.pb' holds 2 records, 8 needed \(--batch_size 8\)"):
        read_instances(path, 8, RecordHeader())


def test_a_header_that_does_not_match_the_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "eb.pb"
    path.write_bytes(framed([example_pb2.ExampleBatch(batch_size=1).SerializeToString()], b""))
    with pytest.raises(InvalidArgumentError, match=r"eb\.pb': record 1: .* bytes but only .*--has_sort_id"):
        read_example_batch(path, "pb", RecordHeader(has_sort_id=True, kafka_dump=True))


def test_a_text_file_read_as_binary_suggests_pbtxt(tmp_path: Path) -> None:
    path = tmp_path / "eb.pbtxt"
    path.write_text('batch_size: 1\nnamed_feature_list { name: "f" }\n')
    with pytest.raises(InvalidArgumentError, match="looks like text: add --file_type pbtxt"):
        read_example_batch(path, "pb", RecordHeader())
    assert read_example_batch(path, "pbtxt", RecordHeader()).named_feature_list[0].name == "f"


def test_text_and_file_errors_name_the_file(tmp_path: Path) -> None:
    typo = tmp_path / "typo.pbtxt"
    typo.write_text("batch_sise: 1\n")
    with pytest.raises(InvalidArgumentError, match=r"typo\.pbtxt': not a text-format ExampleBatch: 1:1"):
        read_example_batch(typo, "pbtxt", RecordHeader())
    with pytest.raises(NotFoundError, match=r"nope\.pb': No such file or directory"):
        read_example_batch(tmp_path / "nope.pb", "pb", RecordHeader())
    binary = tmp_path / "bin.pb"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidArgumentError, match="not UTF-8 text"):
        read_example_batch(binary, "pbtxt", RecordHeader())


def _batch() -> example_pb2.ExampleBatch:
    """Two examples using every kind of list tfs_client converts, a SHARED list and an empty feature."""
    batch = example_pb2.ExampleBatch(batch_size=2)
    v1 = batch.named_feature_list.add(name="v1")
    # Both fids are converted with the slot of the list's first fid (7), as tfs_client does.
    v1.feature.add().fid_v1_list.value.extend([7 << 54 | 11, 9 << 54 | (1 << 50 | 12)])
    v1.feature.add()  # empty: no feature in the Instance
    v2 = batch.named_feature_list.add(name="v2", type=example_pb2.SHARED)
    v2.feature.add().fid_v2_list.value.append(3 << 48 | 4)
    floats = batch.named_feature_list.add(name="floats")
    floats.feature.add().float_list.value.extend([0.5, 1.5])
    floats.feature.add().double_list.value.append(2.5)
    ints = batch.named_feature_list.add(name="ints")
    ints.feature.add().int64_list.value.append(-3)
    ints.feature.add().bytes_list.value.append(b"raw")
    line_ids = batch.named_feature_list.add(name="__LINE_ID__")
    for uid in (10, 20):
        line_ids.feature.add().bytes_list.value.append(line_id_pb2.LineId(uid=uid).SerializeToString())
    labels = batch.named_feature_list.add(name="__LABEL__")
    labels.feature.add().float_list.value.append(1.0)
    labels.feature.add().float_list.value.append(0.0)
    return batch


def test_an_example_batch_becomes_instances_as_tfs_client_converts_it(tmp_path: Path) -> None:
    first = proto_parser_pb2.Instance(label=[1.0], line_id=line_id_pb2.LineId(uid=10))
    first.feature.add(name="v1", fid=[7 << 48 | 11, 7 << 48 | 12])
    first.feature.add(name="v2", fid=[3 << 48 | 4])
    first.feature.add(name="floats", float_value=[0.5, 1.5])
    first.feature.add(name="ints", int64_value=[-3])
    second = proto_parser_pb2.Instance(label=[0.0], line_id=line_id_pb2.LineId(uid=20))
    second.feature.add(name="v2", fid=[3 << 48 | 4])
    second.feature.add(name="floats", float_value=[2.5])
    second.feature.add(name="ints", bytes_value=[b"raw"])
    blobs = example_batch_to_instances(_batch(), tmp_path / "eb")
    assert [proto_parser_pb2.Instance.FromString(blob) for blob in blobs] == [first, second]


def test_a_text_example_batch_converts_like_the_binary_one(tmp_path: Path) -> None:
    text = tmp_path / "eb.pbtxt"
    text.write_text(text_format.MessageToString(_batch()))
    binary = tmp_path / "eb.pb"
    binary.write_bytes(framed([_batch().SerializeToString()], b"\x00" * 8))
    from_text = read_example_batch(text, "pbtxt", RecordHeader())
    from_binary = read_example_batch(binary, "pb", RecordHeader(lagrangex_header=True))
    assert from_text == from_binary == _batch()


def test_a_list_shorter_than_the_batch_is_named(tmp_path: Path) -> None:
    batch = example_pb2.ExampleBatch(batch_size=3)
    batch.named_feature_list.add(name="short").feature.add()
    with pytest.raises(InvalidArgumentError, match="list 'short' has 1 features, example 1 needs one"):
        example_batch_to_instances(batch, tmp_path / "eb")


def test_profile_data_files_are_the_folders_files_in_order(tmp_path: Path) -> None:
    assert profile_data_files(tmp_path / "missing") == []
    (tmp_path / "b.pb").write_bytes(b"")
    (tmp_path / "a.pb").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert profile_data_files(tmp_path) == [tmp_path / "a.pb", tmp_path / "b.pb"]
    with pytest.raises(InvalidArgumentError, match="is not a folder"):
        profile_data_files(tmp_path / "a.pb")
