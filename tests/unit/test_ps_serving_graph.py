"""Serving a Monolith export as Monolith's serving PS does: the table configs of ``<version>/saved_model.pb``
(``ps.serving_graph``) give each table its dim and serving codec (``ps.serving_codec``), applied to dumped and
synced rows alike.

Monolith facts (bytedance/monolith): a serving entry keeps rows encoded by the segment's ``comp_config`` and answers
the decoded floats (hash_table/entry_accessor.cc ``ServingEntryAccessor::Restore/Assign/Fill``,
compressor/float_compressor.cc); embedding slices default to fp16 (feature.py ``default_vec_compressor``).

The SavedModels come from tests/monolith_saved_model.py (protobuf's own encoding of TF's and Monolith's messages).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from monolith_saved_model import BIAS_AND_VEC, TF_FIELDS, TRAINING, saved_model, table_config

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.hash_table_dump import format_dump_filename, write_dump
from monolith_serving.ps.loader import load_version
from monolith_serving.ps.serving_codec import FIXED_R8, FP16, FP32, ONE_BIT, Segment, ServingLayout
from monolith_serving.ps.serving_graph import graph_table_layouts

NATIVE_VERSION = Path(__file__).parent / "data" / "native_multi_hash_table" / "ps_1" / "1700000000"
EXPECTED = json.loads((NATIVE_VERSION.parent / "expected.json").read_text())

# --- the codecs ---------------------------------------------------------------------------------------------


def _coded(segment: Segment, values: list[float]) -> list[float]:
    array = np.array([values], dtype=np.float32)
    segment.apply(array)
    return [float(v) for v in array[0]]


def test_fp16_rounds_to_nearest_even_and_overflows_to_infinity() -> None:
    values = [0.1, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 65519.0, 65520.0, -1e6, 1e-8, float("nan")]
    got = _coded(Segment(8, FP16), values)
    assert got[:7] == [0.0999755859375, 1.0, 1.0 + 2**-9, 65504.0, float("inf"), float("-inf"), 0.0]
    assert np.isnan(got[7])


def test_fixed_r8_counts_steps_of_r_over_128_and_clamps() -> None:
    got = _coded(Segment(6, FIXED_R8, r=1.0), [0.3, -0.3, 5.0, -5.0, float("nan"), 1 / 256])
    # 0.3: trunc((0.3 + 1/256) * 128) = 38; 5.0 clamps at 127, -5.0 at -128; NaN -> 0; 1/256 rounds up to 1 step.
    assert got == [38 / 128, -38 / 128, 127 / 128, -1.0, 0.0, 1 / 128]
    assert _coded(Segment(1, FIXED_R8, r=2.0), [0.5]) == [32 / 64]


def test_one_bit_answers_plus_or_minus_the_amplitude() -> None:
    assert _coded(Segment(4, ONE_BIT), [0.5, -0.2, 0.0, 1e-30]) == pytest.approx([0.1, -0.1, -0.1, 0.1])
    assert _coded(Segment(2, ONE_BIT, amplitude=2.5, init_scale=3.0), [4.0, -4.0]) == [2.5, -2.5]


def test_a_layout_codes_each_segment_of_the_row_in_order() -> None:
    layout = ServingLayout((Segment(1, FP32), Segment(2, FP16), Segment(1, FIXED_R8)))
    rows = np.array([[0.1, 0.1, 0.1, 0.1]], dtype=np.float32)
    assert layout.dim == 4 and not layout.lossless
    coded = layout.applied(rows)
    assert coded[0].tolist() == [np.float32(0.1), 0.0999755859375, 0.0999755859375, 13 / 128]
    assert rows[0].tolist() == [np.float32(0.1)] * 4  # applied() leaves its input alone


# --- reading the graph --------------------------------------------------------------------------------------


def test_the_tensorflow_field_numbers_match_an_independent_build() -> None:
    """TF_FIELDS (what the test SavedModels use, and what ps.serving_graph reads) against PyPI tensorflow-protobuf's
    descriptors, in a subprocess: its modules cannot share a descriptor pool with ours."""
    script = (
        "import json\n"
        "from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2, tensor_pb2\n"
        "from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2\n"
        "classes = [saved_model_pb2.SavedModel, meta_graph_pb2.MetaGraphDef, graph_pb2.GraphDef,\n"
        "           node_def_pb2.NodeDef, attr_value_pb2.AttrValue, tensor_pb2.TensorProto]\n"
        "print(json.dumps({c.DESCRIPTOR.name: {f.name: f.number for f in c.DESCRIPTOR.fields} for c in classes}))\n"
    )
    found = json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True).stdout)
    for message, fields in TF_FIELDS.items():
        assert {name: found[message][name] for name in fields} == fields, message


def test_per_table_and_multi_table_configs_are_read_for_the_own_partition_only() -> None:
    per_table = {"md5name": table_config(BIAS_AND_VEC), "other": table_config([(3, "fixed_r8", {"r": 0.5})])}
    layouts = graph_table_layouts(saved_model(per_table=per_table, partition=2), 2)
    assert layouts == {
        "md5name": ServingLayout((Segment(1, FP32), Segment(4, FP16))),
        "other": ServingLayout((Segment(3, FIXED_R8, r=0.5),)),
    }
    assert graph_table_layouts(saved_model(per_table=per_table, partition=2), 1) == {}

    multi = {"fc_user": table_config([(4, "one_bit", {"amplitude": 0.5})]), "fc_item": table_config(BIAS_AND_VEC)}
    layouts = graph_table_layouts(saved_model(multi=multi, partition=1), 1)
    assert layouts == {
        "fc_item": ServingLayout((Segment(1, FP32), Segment(4, FP16))),
        "fc_user": ServingLayout((Segment(4, ONE_BIT, amplitude=0.5),)),
    }
    assert graph_table_layouts(saved_model(multi=multi, partition=1), 0) == {}


def test_a_training_entry_or_a_segment_without_codec_has_no_serving_layout() -> None:
    training = table_config(BIAS_AND_VEC, entry_type=TRAINING)
    no_codec = table_config(BIAS_AND_VEC)
    no_codec.entry_config.segments[1].ClearField("comp_config")
    layouts = graph_table_layouts(saved_model(per_table={"a": training, "b": no_codec}, partition=0), 0)
    assert layouts == {"a": None, "b": None}


def test_a_malformed_saved_model_fails_the_load_naming_the_file(tmp_path: Path) -> None:
    version = _per_table_version(tmp_path, {"t": 5}, saved=b"\x12\x05ab")  # meta_graphs claims 5 bytes, has 2
    with pytest.raises(InvalidArgumentError, match="saved_model.pb"):
        load_version(version, 0)


# --- loading and syncing ------------------------------------------------------------------------------------

ROWS = np.array([[0.1, 0.1, -0.3, 1e5, 2.0 + 2**-12], [7.0, 1 / 3, 2 / 3, -1e-9, 0.0]], dtype=np.float32)
FIDS = np.array([4, 8], dtype=np.int64)


def _per_table_version(tmp_path: Path, dims: dict[str, int], saved: bytes | None) -> Path:
    version = tmp_path / "ps_0" / "1"
    (version / "assets").mkdir(parents=True)
    for table, dim in dims.items():
        rows = ROWS[:, :dim] if dim <= ROWS.shape[1] else np.ones((2, dim), np.float32)
        write_dump(version / "assets" / format_dump_filename(table, 0, 0, 1), FIDS, rows)
    if saved is not None:
        (version / "saved_model.pb").write_bytes(saved)
    return version


def _fp16(rows: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return rows.astype(np.float16).astype(np.float32)


def test_a_loaded_table_answers_what_monolith_serves_and_syncs_are_coded_too(tmp_path: Path) -> None:
    saved = saved_model(per_table={"t": table_config(BIAS_AND_VEC)}, partition=0)
    tables = load_version(_per_table_version(tmp_path, {"t": 5}, saved), 0)
    table = tables.tables["t"]
    got, missing = table.lookup(np.array([4, 8, 12], dtype=np.int64))
    assert missing == 1 and not got[2].any()
    np.testing.assert_array_equal(got[:2, :1], ROWS[:, :1])  # the fp32 bias as dumped
    np.testing.assert_array_equal(got[:2, 1:], _fp16(ROWS[:, 1:]))
    assert got[0, 1] != ROWS[0, 1] and got[0, 3] == np.inf  # 1e5 is beyond fp16's range

    pushed = np.array([[0.1, 0.1, 0.1, 0.1, 0.1]], dtype=np.float32)
    for fid in (8, 16):  # an existing fid and a new one
        table.upsert(np.array([fid], dtype=np.int64), pushed)
        row = table.lookup(np.array([fid], dtype=np.int64))[0][0]
        assert row.tolist() == [np.float32(0.1)] + [0.0999755859375] * 4
    assert pushed[0, 1] == np.float32(0.1)  # the request's rows are not changed in place


def test_without_a_saved_model_rows_are_served_as_dumped(tmp_path: Path) -> None:
    table = load_version(_per_table_version(tmp_path, {"t": 5}, None), 0).tables["t"]
    np.testing.assert_array_equal(table.lookup(FIDS)[0], ROWS)


def test_the_config_dim_is_the_tables_dim(tmp_path: Path) -> None:
    saved = saved_model(per_table={"t": table_config(BIAS_AND_VEC)}, partition=0)
    with pytest.raises(InvalidArgumentError, match=r"table 't'.*dim 3.*dim 5 \(1\+4\)"):
        load_version(_per_table_version(tmp_path / "a", {"t": 3}, saved), 0)
    # A graph table without dump files: Monolith's restore op fails (NotFound), so does the load.
    saved = saved_model(per_table={"t": table_config(BIAS_AND_VEC), "u": table_config(BIAS_AND_VEC)}, partition=0)
    with pytest.raises(NotFoundError, match="table 'u'.*MonolithHashTable_u_0-<j>-of-<m>"):
        load_version(_per_table_version(tmp_path / "b", {"t": 5}, saved), 0)


def test_a_table_the_graph_does_not_create_is_served_as_dumped(tmp_path: Path) -> None:
    saved = saved_model(per_table={"t": table_config(BIAS_AND_VEC)}, partition=0)
    tables = load_version(_per_table_version(tmp_path, {"t": 5, "x": 4}, saved), 0)
    np.testing.assert_array_equal(tables.tables["x"].lookup(FIDS)[0], ROWS[:, :4])


def test_a_native_dump_gets_config_dims_for_tables_without_rows(tmp_path: Path) -> None:
    version = tmp_path / "ps_1" / "1700000000"
    shutil.copytree(NATIVE_VERSION, version)
    multi = {
        "fc_empty": table_config([(2, "fp16", {})]),  # listed in the dump's meta with no rows
        "fc_item": table_config([(3, "fp32", {})]),
        "fc_user": table_config([(4, "fp16", {})]),
        "fc_new": table_config([(1, "fp32", {}), (6, "fp16", {})]),  # not in the dump at all
    }
    plain = load_version(NATIVE_VERSION, 1)
    (version / "saved_model.pb").write_bytes(saved_model(multi=multi, partition=1))
    tables = load_version(version, 1)
    assert {name: t.dim for name, t in tables.tables.items()} == {
        "fc_empty": 2,
        "fc_item": 3,
        "fc_user": 4,
        "fc_new": 7,
    }
    assert tables.tables["fc_new"].rows == 0 and tables.tables["fc_new"].lookup(FIDS)[0].shape == (2, 7)
    for name, coded in (("fc_item", False), ("fc_user", True)):
        fids = np.array([int(f) for f in EXPECTED[name]["rows"]], dtype=np.int64)
        raw = plain.tables[name].lookup(fids)[0]
        np.testing.assert_array_equal(tables.tables[name].lookup(fids)[0], _fp16(raw) if coded else raw)
        assert not coded or not np.array_equal(_fp16(raw), raw)  # the fixture's rows do change in fp16


def test_a_saved_model_without_tables_of_the_partition_leaves_the_rows_as_dumped(tmp_path: Path) -> None:
    saved = saved_model(per_table={"t": table_config(BIAS_AND_VEC)}, partition=1)  # another PS's graph
    table = load_version(_per_table_version(tmp_path, {"t": 5}, saved), 0).tables["t"]
    np.testing.assert_array_equal(table.lookup(FIDS)[0], ROWS)


def test_a_segment_dim_that_is_not_positive_is_refused(tmp_path: Path) -> None:
    config = table_config(BIAS_AND_VEC)
    config.entry_config.segments[1].dim_size = -4
    version = _per_table_version(tmp_path, {"t": 5}, saved_model(per_table={"t": config}, partition=0))
    with pytest.raises(InvalidArgumentError, match="saved_model.pb.*dim_size -4"):
        load_version(version, 0)


# --- Monolith's shared_embedding exports: the dumps stay in the training checkpoint --------------------------------


def test_a_shared_embedding_export_loads_the_dumps_its_graph_restores_from_the_checkpoint(tmp_path: Path) -> None:
    # Monolith's default (serving.shared_embedding): the export's assets hold no dump; its restore ops read
    # <ckpt>.assets/MonolithHashTable_<t>_<k>, a constant in the graph.
    checkpoint_assets = tmp_path / "model_dir" / "model.ckpt-61.assets"
    checkpoint_assets.mkdir(parents=True)
    write_dump(checkpoint_assets / format_dump_filename("t", 0, 0, 1), FIDS, ROWS)
    write_dump(checkpoint_assets / format_dump_filename("t", 1, 0, 1), FIDS + 1, ROWS)  # another PS's rows
    version = tmp_path / "exported_models" / "ps_0" / "1"
    version.mkdir(parents=True)
    config = table_config([(5, "fp32", {})])
    saved = saved_model(per_table={"t": config}, partition=0, restore_from=f"{checkpoint_assets}/")
    (version / "saved_model.pb").write_bytes(saved)
    table = load_version(version, 0).tables["t"]
    np.testing.assert_array_equal(table.lookup(FIDS)[0], ROWS)

    # The native multi-hash table the same way.
    native = tmp_path / "native_ckpt.assets"
    shutil.copytree(NATIVE_VERSION / "assets", native)
    native_version = tmp_path / "exported_models" / "ps_1" / "1"
    native_version.mkdir(parents=True)
    multi = {"fc_item": table_config([(3, "fp32", {})]), "fc_user": table_config([(4, "fp32", {})])}
    (native_version / "saved_model.pb").write_bytes(saved_model(multi=multi, partition=1, restore_from=f"{native}/"))
    assert {n: t.rows for n, t in load_version(native_version, 1).tables.items()} == {
        n: t.rows for n, t in load_version(NATIVE_VERSION, 1).tables.items()
    }


def test_a_checkpoint_the_ps_cannot_read_fails_the_load_naming_it(tmp_path: Path) -> None:
    version = tmp_path / "ps_0" / "1"
    version.mkdir(parents=True)
    config = {"t": table_config([(5, "fp32", {})])}
    remote = "hdfs://nn/user/m/model_dir/model.ckpt-61.assets/"
    (version / "saved_model.pb").write_bytes(saved_model(per_table=config, partition=0, restore_from=remote))
    with pytest.raises(NotFoundError, match=r"hdfs://nn/user/m/model_dir/model.ckpt-61.assets.*shared_embedding"):
        load_version(version, 0)
    gone = tmp_path / "gone.assets"
    (version / "saved_model.pb").write_bytes(saved_model(per_table=config, partition=0, restore_from=f"{gone}/"))
    with pytest.raises(NotFoundError, match="is not a folder on this machine"):
        load_version(version, 0)
    # Dumps in the export's own assets win (shared_embedding off, or a table exported with its embedding).
    (version / "assets").mkdir()
    write_dump(version / "assets" / format_dump_filename("t", 0, 0, 1), FIDS, ROWS)
    np.testing.assert_array_equal(load_version(version, 0).tables["t"].lookup(FIDS)[0], ROWS)


def test_a_self_contained_export_without_its_dumps_is_explained_as_such(tmp_path: Path) -> None:
    # shared_embedding off: the restore basename is the export's own asset tensor ("./"), i.e. <version>/assets.
    version = tmp_path / "ps_0" / "1"
    (version / "assets").mkdir(parents=True)
    write_dump(version / "assets" / format_dump_filename("t", 1, 0, 1), FIDS, ROWS)  # another partition's only
    saved = saved_model(per_table={"t": table_config([(5, "fp32", {})])}, partition=0, restore_from="./")
    (version / "saved_model.pb").write_bytes(saved)
    with pytest.raises(NotFoundError, match=r"partition 0 in .*assets.*partition\(s\) \[1\] only"):
        load_version(version, 0)
