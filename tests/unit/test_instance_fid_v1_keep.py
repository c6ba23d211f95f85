"""``instance_fid_v1``: a serving spec whose tables are keyed by raw v1 fids (Monolith's Instance parser keeps v1
fids for a model without fid-v2 features). The spec key, the entry's parser, pooling of negative fids, the demo
export and the client's random inputs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from client_cli import run_client

from monolith_serving.client.inputs import encode, encode_instances, encode_tf_examples, random_examples
from monolith_serving.core.demo_export import DemoOptions, demo_spec, write_demo
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.hash_table_dump import find_dump_files, read_dump
from monolith_serving.core.serving_spec import (
    SPEC_FILE,
    InstanceFidV1,
    ServingSpec,
    load_serving_spec,
    parse_serving_spec,
)
from monolith_serving.entry.pooling import Pooler
from monolith_serving.entry.request_parser import RequestParser
from monolith_serving.proto_gen.idl.matrix.proto import example_pb2, proto_parser_pb2

ROWS = 30
U64 = (1 << 64) - 1


def v1(slot: int, k: int) -> int:
    return (slot << 54) | k


def as_int64(fid: int) -> int:
    return fid - (1 << 64) if fid >> 63 else fid


@pytest.fixture(scope="module")
def keep_spec() -> ServingSpec:
    return demo_spec(DemoOptions(out=Path("unused"), instance_fid_v1=InstanceFidV1.KEEP))


def spec_json(**changes: object) -> dict[str, object]:
    data = demo_spec(DemoOptions(out=Path("unused"))).to_json()
    data.update(changes)
    return data


# -- the spec key -------------------------------------------------------------------------------------------------


def test_the_key_defaults_to_the_conversion_and_is_written_only_when_keep(keep_spec: ServingSpec) -> None:
    default = spec_json()
    assert "instance_fid_v1" not in default
    assert parse_serving_spec(default).instance_fid_v1 is InstanceFidV1.TO_V2
    assert parse_serving_spec(spec_json(instance_fid_v1="to_v2")).instance_fid_v1 is InstanceFidV1.TO_V2
    written = keep_spec.to_json()
    assert written["instance_fid_v1"] == "keep"
    assert parse_serving_spec(written) == keep_spec


@pytest.mark.parametrize("value", ["v1", "KEEP", "", 1, True, None, ["keep"]])
def test_a_bad_value_is_refused_naming_the_file_and_the_key(value: object) -> None:
    with pytest.raises(
        InvalidArgumentError, match=r"^x/serving_spec.json: 'instance_fid_v1' must be one of to_v2, keep"
    ):
        parse_serving_spec(spec_json(instance_fid_v1=value), "x/serving_spec.json")


@pytest.mark.parametrize("slot", [1024, 40000, -1])
def test_keep_needs_v1_slots(slot: int) -> None:
    data = spec_json(instance_fid_v1="keep")
    features = data["features"]
    assert isinstance(features, list)
    features[4] = features[4] | {"slot": slot}
    with pytest.raises(InvalidArgumentError, match=rf"^{SPEC_FILE} features\[4\]: slot {slot} is not a v1 slot"):
        parse_serving_spec(data)
    assert parse_serving_spec(spec_json(features=features)).features[4].slot == slot  # to_v2: any slot


# -- the entry's parser and pooling -------------------------------------------------------------------------------


def test_instance_v1_fids_are_kept_or_converted_as_the_spec_says(keep_spec: ServingSpec) -> None:
    by_slot = {f.slot: f.name for f in keep_spec.features}
    assert 516 in by_slot  # the demo puts the item table on slots 516-518
    low, high = v1(1, 7), v1(516, (1 << 54) - 1)  # high has bit 63 set: a negative int64
    named = (518 << 54) | 3  # a named Feature's fids are looked up as given, in either mode
    blob = proto_parser_pb2.Instance(fid=[low, high], feature=[{"name": by_slot[518], "fid": [named]}])
    columns = {
        mode: RequestParser(dataclasses.replace(keep_spec, instance_fid_v1=mode)).parse_instances(
            [blob.SerializeToString()]
        )
        for mode in InstanceFidV1
    }
    names = [f.name for f in keep_spec.features]
    got = {
        mode: {names[i]: c.fids.tolist() for i, c in enumerate(b.sparse) if len(c.fids)} for mode, b in columns.items()
    }
    assert got[InstanceFidV1.KEEP] == {
        by_slot[1]: [low],
        by_slot[516]: [as_int64(high)],
        by_slot[518]: [as_int64(named)],
    }
    assert got[InstanceFidV1.TO_V2] == {
        by_slot[1]: [(1 << 48) | 7],
        by_slot[516]: [(516 << 48) | ((1 << 48) - 1)],
        by_slot[518]: [as_int64(named)],
    }


def test_an_example_batch_fid_v1_list_is_converted_even_when_instances_keep_them(keep_spec: ServingSpec) -> None:
    # Monolith's ExampleBatch parser always converts: the key is about Instances only.
    batch = example_pb2.ExampleBatch(batch_size=1)
    batch.named_feature_list.add(name="item_id").feature.add().fid_v1_list.value.append(v1(516, 9))
    parsed = RequestParser(keep_spec).parse_example_batch(batch.SerializeToString())
    item_id = [f.name for f in keep_spec.features].index("item_id")
    assert parsed.sparse[item_id].fids.tolist() == [(516 << 48) | 9]


def test_negative_fids_are_deduplicated_and_pooled_by_their_own_rows(keep_spec: ServingSpec) -> None:
    a, b = as_int64(v1(516, 1)), as_int64(v1(517, 1))
    assert a < 0 and b < 0
    examples = [
        proto_parser_pb2.Instance(fid=[v1(516, 1), v1(517, 1), v1(516, 1)]).SerializeToString(),
        proto_parser_pb2.Instance(fid=[v1(517, 1)]).SerializeToString(),
    ]
    batch = RequestParser(keep_spec).parse_instances(examples)
    pooler = Pooler(keep_spec, hash_multiplier=0x9E3779B97F4A7C15 - (1 << 64))
    plan = pooler.plan(batch)
    assert plan.unique_fids["item"].tolist() == [a, b]
    dim = keep_spec.table("item").dim
    values = {"item": np.array([np.full(dim, 1.0), np.full(dim, 10.0)], dtype=np.float32)}
    x = pooler.assemble(batch, plan, values)
    user_width = sum(f.width(keep_spec.table("user").dim) for f in keep_spec.features if f.table == "user")
    item_id, item_hist = x[:, user_width : user_width + dim], x[:, user_width + dim : user_width + 2 * dim]
    np.testing.assert_array_equal(item_id[:, 0], [2.0, 0.0])  # slot 516 (sum): a twice
    np.testing.assert_array_equal(item_hist[:, 0], [10.0, 10.0])  # slot 517 (mean): b


# -- the demo export ----------------------------------------------------------------------------------------------


def test_the_demo_keys_its_tables_by_v1_fids_and_its_spec_says_keep(tmp_path: Path) -> None:
    spec = write_demo(DemoOptions(out=tmp_path, num_ps=3, rows=ROWS, instance_fid_v1=InstanceFidV1.KEEP))
    assert load_serving_spec(tmp_path / "entry" / "1") == spec
    assert spec.instance_fid_v1 is InstanceFidV1.KEEP
    for table in spec.tables:
        slots = sorted(f.slot for f in spec.features if f.table == table.name)
        stored = []
        for partition in range(3):
            ids, _ = read_dump(find_dump_files(tmp_path / f"ps_{partition}" / "1" / "assets", partition)[table.name])
            assert all(fid % 3 == partition for fid in ids.tolist())  # floor modulo, negative fids included
            stored += ids.tolist()
        assert sorted(fid & U64 for fid in stored) == sorted(v1(s, k) for s in slots for k in range(ROWS))
    item_ids = [fid for fid in stored if fid < 0]
    assert len(item_ids) == 3 * ROWS  # the last table (item) is on slots 516-518: bit 63 set


def test_without_the_flag_the_spec_has_no_key(tmp_path: Path) -> None:
    write_demo(DemoOptions(out=tmp_path, rows=ROWS))
    assert "instance_fid_v1" not in json.loads((tmp_path / "entry" / "1" / SPEC_FILE).read_text())


def test_too_many_tables_for_v1_slots_is_a_usage_error(tmp_path: Path) -> None:
    tables = ",".join(f"t{i}:2" for i in range(200))
    command = [sys.executable, "-m", "monolith_serving", "export-demo", f"--out={tmp_path}", "--instance_fid_v1=keep"]
    done = subprocess.run(
        [*command, f"--tables={tables}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "past the last v1 slot 1023 (--instance_fid_v1 keep)" in done.stderr
    assert "Traceback" not in done.stderr


# -- the client's random inputs -----------------------------------------------------------------------------------


def test_random_inputs_carry_v1_fids_for_a_keep_spec(keep_spec: ServingSpec) -> None:
    examples = random_examples(keep_spec, 6, np.random.default_rng(2), rows=ROWS)
    slots = {f.name: f.slot for f in keep_spec.features}
    assert all(
        fid >> 54 == slots[name] and fid & ((1 << 54) - 1) < ROWS
        for e in examples
        for name, fids in e.sparse.items()
        for fid in fids
    )
    for example, blob in zip(examples, encode_instances(keep_spec, examples), strict=True):
        instance = proto_parser_pb2.Instance.FromString(blob)
        assert sorted(instance.fid) == sorted(fid for fids in example.sparse.values() for fid in fids)
    assert len(encode(keep_spec, "examples", examples)["examples"]) == 6
    # tf.Examples carry the v1 keys themselves (as int64), and the entry looks them up as given.
    parsed = RequestParser(keep_spec).parse_examples(encode_tf_examples(examples))
    names = [f.name for f in keep_spec.features]
    for i, column in enumerate(parsed.sparse):
        sent = [as_int64(fid) for e in examples for fid in e.sparse[names[i]]]
        assert column.fids.tolist() == sent, names[i]
    assert any(fid < 0 for column in parsed.sparse for fid in column.fids.tolist())  # slots from 512: bit 63
    with pytest.raises(InvalidArgumentError, match="'instance_fid_v1': 'keep'.*send instances or examples"):
        encode(keep_spec, "example_batch", examples)


def test_the_client_refuses_an_example_batch_for_a_keep_spec_before_connecting(tmp_path: Path) -> None:
    write_demo(DemoOptions(out=tmp_path, rows=ROWS, instance_fid_v1=InstanceFidV1.KEEP))
    done = run_client("predict", "--target", "127.0.0.1:1", "--spec", str(tmp_path), "--input_type", "example_batch")
    assert done.returncode == 2, done.stderr
    assert "error: input type example_batch: the serving spec keys its tables by v1 fids" in done.stderr
