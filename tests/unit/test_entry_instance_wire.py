"""The compiled Instance reader (``instance_wire`` via ``RequestParser.parse_instances``) against protobuf.

A reference parser below walks messages parsed by protobuf itself, with the documented semantics (per feature:
examples in order; within an example the named Feature fids, then the slot-mapped v1 fids; a dense input given
twice keeps its last values). Instances are encoded by hand so that packed and unpacked fields, unknown fields of
every wire type (groups included) and 64-bit fids all occur. Mutated bytes check the error side: whatever
protobuf accepts we accept with the same result, and we never reject what protobuf accepts.
"""

from __future__ import annotations

import dataclasses
import random
import re
import struct

import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf.message import DecodeError

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.proto_wire import length_delimited, tag, varint
from monolith_serving.core.serving_spec import (
    DenseBackend,
    DenseInputSpec,
    DenseSpec,
    FeatureSpec,
    InstanceFidV1,
    Pooling,
    ServingSpec,
    TableSpec,
)
from monolith_serving.entry.request_parser import ParsedBatch, RequestParser
from monolith_serving.proto_gen.idl.matrix.proto import proto_parser_pb2

SPEC = ServingSpec(
    model_name="t",
    num_ps=2,
    tables=(TableSpec("u", 4), TableSpec("i", 3)),
    features=(
        FeatureSpec("uid", 5, "u", Pooling.SUM),
        FeatureSpec("hist", 7, "i", Pooling.FIRSTN, first_n=2),
        FeatureSpec("geo", 1000, "u", Pooling.MEAN),
    ),
    dense_inputs=(DenseInputSpec("ctx", 2), DenseInputSpec("age", 1)),
    dense=DenseSpec(DenseBackend.NUMPY),
    max_batch_size=64,
)
LENIENT = dataclasses.replace(SPEC, ignore_unknown_features=True)
KEEP_V1 = dataclasses.replace(SPEC, instance_fid_v1=InstanceFidV1.KEEP)  # slot 1000: v1 fids with bit 63 set
SLOTS = (5, 7, 1000)
SPARSE = ("uid", "hist", "geo")
DENSE = {"ctx": 2, "age": 1}


# -- hand encoding ------------------------------------------------------------------------------------------------


def fixed64s(field: int, values: list[int], packed: bool) -> bytes:
    if packed:
        return length_delimited(field, b"".join(struct.pack("<Q", v) for v in values))
    return b"".join(tag(field, 1) + struct.pack("<Q", v) for v in values)


def floats(field: int, values: list[float], packed: bool) -> bytes:
    if packed:
        return length_delimited(field, b"".join(struct.pack("<f", v) for v in values))
    return b"".join(tag(field, 5) + struct.pack("<f", v) for v in values)


def unknown_field(rng: random.Random, fields: tuple[int, ...] = (4, 11, 50, 100, 12345)) -> bytes:
    """A field the reader skips: a number the message lacks, or (Instance 4, 100) a scalar given with another wire
    type, which protobuf also keeps as unknown."""
    field = rng.choice(fields)
    kind = rng.randrange(5)
    if kind == 0:
        return tag(field, 0) + varint(rng.getrandbits(64))
    if kind == 1:
        return tag(field, 1) + rng.randbytes(8)
    if kind == 2:
        return tag(field, 5) + rng.randbytes(4)
    if kind == 3:
        return length_delimited(field, rng.randbytes(rng.randrange(6)))
    # A group holding a varint and a nested group.
    inner = tag(3, 0) + varint(7) + tag(4, 3) + tag(1, 5) + b"abcd" + tag(4, 4)
    return tag(field, 3) + inner + tag(field, 4)


def random_fid(rng: random.Random, slot: int) -> int:
    return (slot << 54) | rng.getrandbits(54)


def random_v2(rng: random.Random, slot: int) -> int:
    # v2 fids with the top bit set happen (slot >= 2**15): they must survive as the same 64 bits.
    return ((slot if rng.random() < 0.8 else slot | 0x8000) << 48) | rng.getrandbits(48)


def fid_list(fids: list[int], rng: random.Random) -> bytes:
    """One ``Feature.fid_list`` entry (6): a ``Fixed64List`` whose ``value`` (1) may come in several runs."""
    parts = []
    while fids:
        k = rng.randrange(1, len(fids) + 1)
        parts.append(fixed64s(1, fids[:k], packed=rng.random() < 0.6))
        fids = fids[k:]
    if rng.random() < 0.2:
        parts.append(unknown_field(rng, fields=(2, 9, 777)))
    return length_delimited(6, b"".join(parts))


def feature(
    name: bytes | None, fids: list[int], values: list[float], rng: random.Random, lists: list[list[int]] | None = None
) -> bytes:
    parts = []
    if name is not None:
        parts.append(length_delimited(1, name))
    if fids:
        parts.append(fixed64s(2, fids, packed=rng.random() < 0.7))
    if values:
        parts.append(floats(3, values, packed=rng.random() < 0.7))
    if rng.random() < 0.3:
        parts.append(unknown_field(rng, fields=(11, 50, 12345)))  # Feature has fields 1-9
    rng.shuffle(parts)  # protobuf accepts fields in any order; the name may come last, ``fid`` after ``fid_list``
    at = 0
    for fids_of_list in lists or []:
        # Anywhere after the previous entry: the entries of a repeated message field keep their order.
        at = rng.randrange(at, len(parts) + 1)
        parts.insert(at, fid_list(fids_of_list, rng))
        at += 1
    return b"".join(parts)


def random_instance(rng: random.Random, unknown_names: bool = False) -> bytes:
    parts = []
    if rng.random() < 0.8:
        v1 = [random_fid(rng, rng.choice(SLOTS)) for _ in range(rng.randrange(6))]
        # Split into chunks: repeated fields may arrive in several runs, packed or not.
        while v1:
            k = rng.randrange(1, len(v1) + 1)
            parts.append(fixed64s(1, v1[:k], packed=rng.random() < 0.6))
            v1 = v1[k:]
    for _ in range(rng.randrange(5)):
        kind = rng.random()
        if kind < 0.5:
            name = rng.choice(SPARSE)
            lists = [[random_v2(rng, 3) for _ in range(rng.randrange(4))] for _ in range(rng.randrange(3))]
            fids = [random_v2(rng, 3) for _ in range(rng.randrange(4))]
            parts.append(length_delimited(9, feature(name.encode(), fids, [], rng, lists)))
        elif kind < 0.85:
            name = rng.choice(list(DENSE))
            values = [rng.uniform(-2, 2) for _ in range(DENSE[name])]
            parts.append(length_delimited(9, feature(name.encode(), [], values, rng)))
        elif unknown_names:
            parts.append(length_delimited(9, feature(b"nope", [1, 2], [0.5], rng)))
    for _ in range(rng.randrange(3)):
        parts.insert(rng.randrange(len(parts) + 1), unknown_field(rng))
    return b"".join(parts)


# -- the reference ------------------------------------------------------------------------------------------------


def reference(spec: ServingSpec, blobs: list[bytes]) -> tuple[list[list[tuple[int, int]]], npt.NDArray[np.float32]]:
    """Per feature [(example, fid as uint64)] in order, and the dense matrix, from protobuf-parsed messages."""
    sparse_index = {f.name: i for i, f in enumerate(spec.features)}
    slot_index: dict[int, int] = {}
    for i, f in enumerate(spec.features):
        slot_index.setdefault(f.slot, i)
    dense_at: dict[str, tuple[int, int]] = {}
    offset = 0
    for d in spec.dense_inputs:
        dense_at[d.name] = (offset, d.dim)
        offset += d.dim
    columns: list[list[tuple[int, int]]] = [[] for _ in spec.features]
    dense = np.zeros((len(blobs), offset), dtype=np.float32)
    for row, blob in enumerate(blobs):
        instance = proto_parser_pb2.Instance.FromString(blob)
        per_feature: list[list[int]] = [[] for _ in spec.features]
        for item in instance.feature:
            name = item.name
            if name in sparse_index:
                per_feature[sparse_index[name]].extend(item.fid)
                for entry in item.fid_list:  # a sequence feature: its fids after ``fid``, as Monolith reads them
                    per_feature[sparse_index[name]].extend(entry.value)
            elif name in dense_at:
                at, dim = dense_at[name]
                if len(item.float_value) != dim:
                    raise InvalidArgumentError(f"dense input {name!r} needs {dim} values, got {len(item.float_value)}")
                dense[row, at : at + dim] = list(item.float_value)
            elif not spec.ignore_unknown_features:
                raise InvalidArgumentError(f"unknown feature {name!r}")
        for fid in instance.fid:
            slot = fid >> 54
            if slot in slot_index:
                keep = spec.instance_fid_v1 is InstanceFidV1.KEEP
                per_feature[slot_index[slot]].append(fid if keep else (slot << 48) | (fid & ((1 << 48) - 1)))
            elif not spec.ignore_unknown_features:
                raise InvalidArgumentError(f"unknown slot(s) {slot}")
        for i, fids in enumerate(per_feature):
            columns[i].extend((row, fid) for fid in fids)
    return columns, dense


def columns_of(batch: ParsedBatch) -> list[list[tuple[int, int]]]:
    return [list(zip(c.rows.tolist(), c.fids.view(np.uint64).tolist(), strict=True)) for c in batch.sparse]


# -- tests ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [SPEC, KEEP_V1], ids=["v1_to_v2", "keep_v1"])
@pytest.mark.parametrize("seed", range(40))
def test_random_instances_read_exactly_as_protobuf_reads_them(seed: int, spec: ServingSpec) -> None:
    rng = random.Random(seed)
    blobs = [random_instance(rng) for _ in range(rng.randrange(1, 20))]
    batch = RequestParser(spec).parse_instances(blobs)
    expected_columns, expected_dense = reference(spec, blobs)
    assert batch.batch_size == len(blobs)
    assert columns_of(batch) == expected_columns
    np.testing.assert_array_equal(batch.dense, expected_dense)


def test_unknown_names_and_slots_are_skipped_only_when_the_spec_says_so() -> None:
    rng = random.Random(7)
    blobs = [random_instance(rng, unknown_names=True) for _ in range(30)]
    blobs.append(fixed64s(1, [random_fid(rng, 3)], packed=True))  # slot 3 is in no feature
    batch = RequestParser(LENIENT).parse_instances(blobs)
    expected_columns, expected_dense = reference(LENIENT, blobs)
    assert columns_of(batch) == expected_columns
    np.testing.assert_array_equal(batch.dense, expected_dense)
    with pytest.raises(InvalidArgumentError, match=r"unknown (feature 'nope'|slot\(s\) 3)"):
        RequestParser(SPEC).parse_instances(blobs)


def test_a_dense_input_given_twice_keeps_its_last_values_and_a_wrong_width_names_it() -> None:
    rng = random.Random(1)
    twice = length_delimited(9, feature(b"age", [], [1.0], rng)) + length_delimited(9, feature(b"age", [], [2.0], rng))
    batch = RequestParser(SPEC).parse_instances([twice])
    assert batch.dense.tolist() == [[0.0, 0.0, 2.0]]
    wrong = length_delimited(9, feature(b"ctx", [], [1.0, 2.0, 3.0], rng))
    with pytest.raises(
        InvalidArgumentError, match=r"'instances'\[1\] feature 'ctx': dense input 'ctx' needs 2 values, got 3"
    ):
        RequestParser(SPEC).parse_instances([twice, wrong])


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"\x0a\x08\x01\x02", "length runs past the end"),
        (b"\x0a\x05" + b"\x00" * 5, "not a multiple of its width"),
        (b"\x09\x01\x02", "truncated fixed-width"),
        (b"\x80", "truncated varint"),
        (b"\x00\x01", "field number 0"),
        (b"\x0e\x01", "invalid wire type"),
        (b"\x0c", "end-group tag without a start-group"),
        (b"\x4a\x03\x0a\x05a", "length runs past the end"),  # a Feature whose name runs past the Feature
        (b"\x4a\x02\x12\x03", "length runs past the end"),  # packed fids past the Feature's end
        (b"\x98\x01" + b"\xff" * 11, "varint longer than 10 bytes"),
    ],
)
def test_malformed_bytes_are_refused_naming_the_example_and_the_reason(blob: bytes, reason: str) -> None:
    with pytest.raises(DecodeError):
        proto_parser_pb2.Instance.FromString(blob)
    good = fixed64s(1, [random_fid(random.Random(0), 5)], packed=True)
    with pytest.raises(
        InvalidArgumentError, match=rf"input 'instances'\[1\] is not a serialized parser.proto.Instance: .*{reason}"
    ):
        RequestParser(SPEC).parse_instances([good, blob])


@pytest.mark.parametrize("seed", range(30))
def test_mutated_bytes_never_refused_when_protobuf_accepts_them_and_read_alike(seed: int) -> None:
    rng = random.Random(1000 + seed)
    parser = RequestParser(LENIENT)
    for _ in range(40):
        blob = bytearray(random_instance(rng))
        for _ in range(rng.randrange(1, 4)):
            if not blob:
                break
            where = rng.randrange(len(blob))
            action = rng.randrange(3)
            if action == 0:
                blob[where] = rng.randrange(256)
            elif action == 1:
                del blob[where:]
            else:
                blob.insert(where, rng.randrange(256))
        data = bytes(blob)
        try:
            proto_parser_pb2.Instance.FromString(data)
        except DecodeError:
            continue  # damage protobuf refuses: ours may refuse it too, or skip it where it reads nothing
        try:
            expected_columns, expected_dense = reference(LENIENT, [data])
        except InvalidArgumentError as error:  # a dense input damaged to the wrong width
            with pytest.raises(InvalidArgumentError, match=re.escape(error.message)):
                parser.parse_instances([data])
            continue
        batch = parser.parse_instances([data])
        assert columns_of(batch) == expected_columns
        np.testing.assert_array_equal(batch.dense, expected_dense)


def test_a_sequence_feature_fid_list_is_read_after_the_fid_values_whatever_the_wire_order() -> None:
    # Monolith's Instance parser takes a sparse Feature's ``fid`` and then every ``fid_list`` entry's values
    # (parse_instance_lib.cc IterateFidFeatures); a dense or unknown Feature's fid_list is not read.
    a, b, c, d = ((3 << 48) | k for k in (11, 12, 13, 14))
    lists = length_delimited(6, fixed64s(1, [b, c], packed=True)) + length_delimited(6, fixed64s(1, [d], packed=False))
    hist = length_delimited(9, length_delimited(1, b"hist") + lists + fixed64s(2, [a], packed=True))
    age = length_delimited(9, length_delimited(1, b"age") + floats(3, [0.5], packed=True) + lists)
    batch = RequestParser(SPEC).parse_instances([hist + age, age])
    assert columns_of(batch)[1] == [(0, a), (0, b), (0, c), (0, d)]
    assert batch.dense.tolist() == [[0.0, 0.0, 0.5], [0.0, 0.0, 0.5]]
