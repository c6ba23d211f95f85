from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np

from monolith_serving.core.demo_export import DemoOptions, table_fids, write_demo
from monolith_serving.core.dense_spec import load_dense_model_spec
from monolith_serving.core.export_layout import list_sub_models, list_versions
from monolith_serving.core.hash_table_dump import find_dump_files, read_dump
from monolith_serving.core.serving_spec import load_serving_spec

DEMO = (sys.executable, "-m", "monolith_serving", "export-demo")


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "monolith_serving",
                "export-demo",
                "--out",
                str(tmp_path / name),
                "--num-ps",
                "3",
                "--rows",
                "50",
                "--version",
                "5",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    first, second = _digest_tree(tmp_path / "a"), _digest_tree(tmp_path / "b")
    assert first == second
    assert any(name.startswith("ps_2/5/assets/MonolithHashTable_item_2-00001-of-00002") for name in first)


def test_other_seed_gives_other_rows(tmp_path: Path) -> None:
    write_demo(DemoOptions(out=tmp_path / "a", rows=20, seed=1))
    write_demo(DemoOptions(out=tmp_path / "b", rows=20, seed=2))
    assert _digest_tree(tmp_path / "a") != _digest_tree(tmp_path / "b")


def test_layout_and_sharding(tmp_path: Path) -> None:
    options = DemoOptions(out=tmp_path, num_ps=3, rows=40, version=9)
    spec = write_demo(options)
    assert list_sub_models(tmp_path) == ["entry", "ps_0", "ps_1", "ps_2"]
    assert list_versions(tmp_path / "ps_1") == [9]
    assert load_serving_spec(tmp_path / "entry" / "9") == spec
    for table in spec.tables:
        stored_ids = []
        for i in range(3):
            files = find_dump_files(tmp_path / f"ps_{i}" / "9" / "assets", i)
            assert len(files[table.name]) == 2
            ids, values = read_dump(files[table.name])
            assert values.shape == (len(ids), table.dim)
            assert np.all(np.mod(ids, 3) == i), "a row is on the wrong shard"
            stored_ids.append(ids)
        np.testing.assert_array_equal(np.sort(np.concatenate(stored_ids)), np.sort(table_fids(spec, table.name, 40)))
    weights = sorted((tmp_path / "entry" / "9" / "dense").iterdir())
    assert [w.name for w in weights] == [
        "layer0_b.npy",
        "layer0_w.npy",
        "layer1_b.npy",
        "layer1_w.npy",
        "layer2_b.npy",
        "layer2_w.npy",
    ]
    assert np.load(tmp_path / "entry" / "9" / "dense" / "layer0_w.npy").shape == (spec.input_width, 16)


def test_heads_give_one_sigmoid_column_per_named_output(tmp_path: Path) -> None:
    done = subprocess.run(
        [*DEMO, "--out", str(tmp_path), "--rows", "20", "--heads", "ctr,cvr", "--dense_alone"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    spec = load_serving_spec(tmp_path / "entry" / "1")
    assert [(o.name, o.width) for o in spec.outputs] == [("ctr", 1), ("cvr", 1)]
    dense = load_dense_model_spec(tmp_path / "dense_0" / "1")
    assert dense.output_name == "scores"  # the dense server answers the whole matrix; the entry splits it
    last = dense.dense.layers[-1]
    assert last.activation == "sigmoid"
    assert np.load(tmp_path / "dense_0" / "1" / last.weight).shape == (8, 2)


def test_heads_must_be_distinct_names(tmp_path: Path) -> None:
    for heads in ("ctr,ctr", "ctr,", ""):
        done = subprocess.run(
            [*DEMO, "--out", str(tmp_path), "--heads", heads],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2 and "--heads" in done.stderr, (heads, done.stderr)
        assert not tmp_path.joinpath("entry").exists()
