"""Request parsing: the three input kinds, v1 -> v2 fid conversion, and every bad-input error."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.serving_spec import (
    DenseBackend,
    DenseInputSpec,
    DenseSpec,
    FeatureSpec,
    Pooling,
    ServingSpec,
    TableSpec,
)
from monolith_serving.entry.request_parser import ParsedBatch, RequestParser, fid_v1_to_v2
from monolith_serving.proto_gen.idl.matrix.proto import example_pb2 as mex
from monolith_serving.proto_gen.idl.matrix.proto import proto_parser_pb2
from monolith_serving.proto_gen.tensorflow.core.example import example_pb2 as tfex

SPEC = ServingSpec(
    model_name="t",
    num_ps=2,
    tables=(TableSpec("u", 4), TableSpec("i", 3)),
    features=(
        FeatureSpec("uid", 5, "u", Pooling.SUM),
        FeatureSpec("hist", 7, "i", Pooling.FIRSTN, first_n=2),
    ),
    dense_inputs=(DenseInputSpec("ctx", 2),),
    dense=DenseSpec(DenseBackend.NUMPY),
    max_batch_size=8,
)


def v1(slot: int, h: int) -> int:
    return (slot << 54) | h


def v2(slot: int, h: int) -> int:
    return (slot << 48) | h


def as_lists(batch: ParsedBatch, feature: int) -> list[list[int]]:
    """Per example, the fids of a feature as unsigned ints."""
    out: list[list[int]] = [[] for _ in range(batch.batch_size)]
    column = batch.sparse[feature]
    for fid, row in zip(column.fids.view(np.uint64).tolist(), column.rows.tolist(), strict=True):
        out[row].append(fid)
    return out


def test_v1_to_v2_keeps_slot_and_low_48_bits() -> None:
    fids = [v1(5, 12345), v1(1023, (1 << 54) - 1), v1(0, 7)]
    expected = [v2(5, 12345), v2(1023, (1 << 48) - 1), v2(0, 7)]
    got = fid_v1_to_v2(np.array(fids, dtype=np.uint64)).view(np.uint64).tolist()
    assert got == expected


def test_instances_slot_fids_named_fids_and_dense() -> None:
    a = proto_parser_pb2.Instance(fid=[v1(5, 1), v1(7, 9), v1(5, 2)])
    a.feature.add(name="ctx", float_value=[0.5, -1.0])
    b = proto_parser_pb2.Instance()
    b.feature.add(name="hist", fid=[v2(7, 3), v2(7, 4), v2(7, 5)])
    c = proto_parser_pb2.Instance(fid=[v1(7, 8)])
    batch = RequestParser(SPEC).parse_instances([x.SerializeToString() for x in (a, b, c)])
    assert batch.batch_size == 3
    assert as_lists(batch, 0) == [[v2(5, 1), v2(5, 2)], [], []]
    assert as_lists(batch, 1) == [[v2(7, 9)], [v2(7, 3), v2(7, 4), v2(7, 5)], [v2(7, 8)]]
    np.testing.assert_array_equal(batch.dense, [[0.5, -1.0], [0, 0], [0, 0]])


def test_instances_dense_inputs_missing_here_and_there_and_given_twice() -> None:
    spec = dataclasses.replace(SPEC, dense_inputs=(DenseInputSpec("ctx", 2), DenseInputSpec("age", 1)))
    examples = [proto_parser_pb2.Instance() for _ in range(4)]
    examples[0].feature.add(name="age", float_value=[3.0])
    examples[0].feature.add(name="ctx", float_value=[1.0, 2.0])
    examples[1].feature.add(name="ctx", float_value=[5.0, 6.0])
    examples[1].feature.add(name="ctx", float_value=[7.0, 8.0])  # the last one counts
    examples[3].feature.add(name="age", float_value=[9.0])
    examples[3].feature.add(name="ctx", float_value=[-1.0, -2.0])
    batch = RequestParser(spec).parse_instances([x.SerializeToString() for x in examples])
    np.testing.assert_array_equal(batch.dense, [[1, 2, 3], [7, 8, 0], [0, 0, 0], [-1, -2, 9]])
    full = RequestParser(spec).parse_instances([examples[0].SerializeToString()] * 3)
    np.testing.assert_array_equal(full.dense, [[1, 2, 3]] * 3)


def test_example_batch_individual_shared_v1_v2_and_reserved_lists() -> None:
    eb = mex.ExampleBatch(batch_size=2)
    uid = eb.named_feature_list.add(name="uid", type=mex.SHARED)
    uid.feature.add().fid_v1_list.value.extend([v1(5, 11)])
    hist = eb.named_feature_list.add(name="hist")
    hist.feature.add().fid_v2_list.value.extend([v2(7, 1), v2(7, 2)])
    hist.feature.add()  # empty feature: no fids for example 1
    ctx = eb.named_feature_list.add(name="ctx")
    ctx.feature.add().float_list.value.extend([1.0, 2.0])
    ctx.feature.add().float_list.value.extend([3.0, 4.0])
    label = eb.named_feature_list.add(name="__LABEL__")
    label.feature.add().float_value = 1.0
    label.feature.add().float_value = 0.0
    batch = RequestParser(SPEC).parse_example_batch(eb.SerializeToString())
    assert as_lists(batch, 0) == [[v2(5, 11)], [v2(5, 11)]]
    assert as_lists(batch, 1) == [[v2(7, 1), v2(7, 2)], []]
    np.testing.assert_array_equal(batch.dense, [[1, 2], [3, 4]])


def test_example_batch_infers_batch_size_and_shares_dense() -> None:
    eb = mex.ExampleBatch()
    uid = eb.named_feature_list.add(name="uid")
    for h in (1, 2, 3):
        uid.feature.add().fid_v2_list.value.append(v2(5, h))
    ctx = eb.named_feature_list.add(name="ctx", type=mex.SHARED)
    ctx.feature.add().float_list.value.extend([7.0, 8.0])
    batch = RequestParser(SPEC).parse_example_batch(eb.SerializeToString())
    assert batch.batch_size == 3
    np.testing.assert_array_equal(batch.dense, [[7, 8]] * 3)


def test_tf_examples() -> None:
    e = tfex.Example()
    e.features.feature["uid"].int64_list.value.extend([v2(5, 3), v2(5, 4)])
    e.features.feature["ctx"].float_list.value.extend([0.25, 0.75])
    batch = RequestParser(SPEC).parse_examples([e.SerializeToString(), tfex.Example().SerializeToString()])
    assert as_lists(batch, 0) == [[v2(5, 3), v2(5, 4)], []]
    np.testing.assert_array_equal(batch.dense, [[0.25, 0.75], [0, 0]])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: p.parse_instances([b"\xff\xff\xff"]), "'instances'[0] is not a serialized"),
        (lambda p: p.parse_instances([]), "batch is empty"),
        (lambda p: p.parse_instances([b""] * 9), "exceeds the maximum of 8"),
        (
            lambda p: p.parse_instances([proto_parser_pb2.Instance(fid=[v1(99, 1)]).SerializeToString()]),
            "unknown slot(s) 99",
        ),
        (lambda p: p.parse_example_batch(b"\x0a\x05\xff"), "not a serialized monolith.io.proto.ExampleBatch"),
        (lambda p: p.parse_examples([b"\x0a\x03\xff"]), "'examples'[0] is not a serialized"),
    ],
)
def test_bad_inputs_are_invalid_argument(build: object, message: str) -> None:
    parser = RequestParser(SPEC)
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        build(parser)  # type: ignore[operator]


def test_unknown_named_feature_is_an_error_unless_the_spec_ignores_it() -> None:
    instance = proto_parser_pb2.Instance()
    instance.feature.add(name="nope", fid=[1])
    blob = instance.SerializeToString()
    with pytest.raises(InvalidArgumentError, match="unknown feature 'nope'"):
        RequestParser(SPEC).parse_instances([blob])
    lenient = RequestParser(dataclasses.replace(SPEC, ignore_unknown_features=True))
    batch = lenient.parse_instances([blob, proto_parser_pb2.Instance(fid=[v1(99, 1)]).SerializeToString()])
    assert all(len(c.fids) == 0 for c in batch.sparse)


def test_wrong_kinds_and_sizes_name_the_feature() -> None:
    parser = RequestParser(SPEC)
    eb = mex.ExampleBatch(batch_size=1)
    eb.named_feature_list.add(name="uid").feature.add().float_list.value.append(1.0)
    with pytest.raises(InvalidArgumentError, match="list 'uid'.*needs fid_v1_list or fid_v2_list, got float_list"):
        parser.parse_example_batch(eb.SerializeToString())
    eb = mex.ExampleBatch(batch_size=2)
    eb.named_feature_list.add(name="uid").feature.add()
    with pytest.raises(InvalidArgumentError, match="INDIVIDUAL list needs batch_size=2 features, got 1"):
        parser.parse_example_batch(eb.SerializeToString())
    instance = proto_parser_pb2.Instance()
    instance.feature.add(name="ctx", float_value=[1.0, 2.0, 3.0])
    with pytest.raises(InvalidArgumentError, match="dense input 'ctx' needs 2 values, got 3"):
        parser.parse_instances([instance.SerializeToString()])
    e = tfex.Example()
    e.features.feature["uid"].float_list.value.append(1.0)
    with pytest.raises(InvalidArgumentError, match="'uid'.*needs int64_list fids"):
        parser.parse_examples([e.SerializeToString()])


# -- the fid limit -----------------------------------------------------------------------------------


def shared_uid_batch(batch_size: int, num_fids: int) -> bytes:
    """An ExampleBatch whose only sparse list is a SHARED ``uid`` of ``num_fids`` fids."""
    eb = mex.ExampleBatch(batch_size=batch_size)
    eb.named_feature_list.add(name="uid", type=mex.SHARED).feature.add().fid_v2_list.value.extend(
        v2(5, h) for h in range(num_fids)
    )
    return eb.SerializeToString()


def test_the_default_limit_counts_a_shared_list_once_per_example() -> None:
    # 2049 shared fids x 1024 examples is a 16 KB request that would expand to 2,098,176 fids.
    parser = RequestParser(dataclasses.replace(SPEC, max_batch_size=1024))
    at_limit = parser.parse_example_batch(shared_uid_batch(1024, 2048))
    assert len(at_limit.sparse[0].fids) == 1 << 21
    message = "list 'uid': 2098176 fids (2049 shared by 1024 examples) bring the request to 2098176 fids, "
    with pytest.raises(InvalidArgumentError, match=re.escape(message) + ".*limit of 2097152"):
        parser.parse_example_batch(shared_uid_batch(1024, 2049))


def test_the_example_batch_limit_covers_every_feature_together() -> None:
    parser = RequestParser(SPEC, max_fids_per_request=10)
    eb = mex.ExampleBatch(batch_size=3)
    hist = eb.named_feature_list.add(name="hist")
    for h in (1, 2, 3):
        hist.feature.add().fid_v2_list.value.extend([v2(7, h), v2(7, h + 10)])  # 6 fids
    eb.named_feature_list.add(name="uid", type=mex.SHARED).feature.add().fid_v2_list.value.extend([v2(5, 1)])
    assert parser.parse_example_batch(eb.SerializeToString()).batch_size == 3  # 6 + 1 x 3 = 9
    eb.named_feature_list[1].feature[0].fid_v2_list.value.append(v2(5, 2))  # 6 + 2 x 3 = 12
    with pytest.raises(InvalidArgumentError, match=r"list 'uid': 6 fids \(2 shared by 3 examples\).* 12 fids.* 10 "):
        parser.parse_example_batch(eb.SerializeToString())
    eb.named_feature_list[0].feature[0].fid_v2_list.value.extend(range(5))  # the INDIVIDUAL list alone is 11
    with pytest.raises(InvalidArgumentError, match=r"list 'hist': 11 fids bring the request to 11 fids"):
        parser.parse_example_batch(eb.SerializeToString())


def test_the_instances_limit_names_the_feature_with_the_most_fids() -> None:
    parser = RequestParser(SPEC, max_fids_per_request=4)
    a = proto_parser_pb2.Instance(fid=[v1(5, 1), v1(7, 2)])
    b = proto_parser_pb2.Instance()
    b.feature.add(name="hist", fid=[v2(7, 3), v2(7, 4)])
    assert parser.parse_instances([a.SerializeToString(), b.SerializeToString()]).batch_size == 2
    b.feature[0].fid.append(v2(7, 5))
    with pytest.raises(InvalidArgumentError, match=r"'instances' feature 'hist': 4 fids bring the request to 5 fids"):
        parser.parse_instances([a.SerializeToString(), b.SerializeToString()])


def test_the_examples_limit_names_the_example_and_feature() -> None:
    parser = RequestParser(SPEC, max_fids_per_request=3)
    e = tfex.Example()
    e.features.feature["uid"].int64_list.value.extend([v2(5, 3), v2(5, 4)])
    blob = e.SerializeToString()
    assert parser.parse_examples([blob]).batch_size == 1
    with pytest.raises(InvalidArgumentError, match=r"'examples'\[1\] feature 'uid': 2 fids .* 4 fids.* limit of 3"):
        parser.parse_examples([blob, blob])
