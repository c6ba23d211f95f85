"""dense_alone export: the entry's ``remote`` dense backend and the dense sub-model's ``dense_spec.json``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from monolith_serving.core.demo_export import DemoOptions, demo_spec, write_demo
from monolith_serving.core.dense_spec import (
    DENSE_SPEC_FILE,
    load_dense_model_spec,
    parse_dense_model_spec,
)
from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.export_layout import list_sub_models
from monolith_serving.core.serving_spec import DenseBackend, load_serving_spec, parse_serving_spec


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_remote_backend_round_trips() -> None:
    spec = demo_spec(DemoOptions(out=Path("/unused"), dense_alone=True))
    data = spec.to_json()
    assert data["dense"] == {"backend": "remote", "sub_model": "dense_0"}
    assert parse_serving_spec(data) == spec


@pytest.mark.parametrize(
    ("dense", "message"),
    [
        ({"backend": "remote"}, r"dense: missing key 'sub_model'"),
        ({"backend": "remote", "sub_model": "ps_0"}, r"dense: sub_model must be 'dense_0'"),
        ({"backend": "tf"}, r"dense: backend must be one of numpy, onnx, remote"),
    ],
)
def test_bad_remote_dense_names_the_key(dense: dict[str, Any], message: str) -> None:
    data = demo_spec(DemoOptions(out=Path("/unused"))).to_json()
    data["dense"] = dense
    with pytest.raises(InvalidArgumentError, match=message):
        parse_serving_spec(data, "spec.json")


def test_dense_alone_export_moves_the_same_mlp_to_dense_0(tmp_path: Path) -> None:
    plain = write_demo(DemoOptions(out=tmp_path / "plain", num_ps=2, rows=30, version=4))
    alone = write_demo(DemoOptions(out=tmp_path / "alone", num_ps=2, rows=30, version=4, dense_alone=True))
    assert list_sub_models(tmp_path / "alone") == ["dense_0", "entry", "ps_0", "ps_1"]
    assert load_serving_spec(tmp_path / "alone" / "entry" / "4").dense.backend is DenseBackend.REMOTE
    assert alone.input_width == plain.input_width
    dense = load_dense_model_spec(tmp_path / "alone" / "dense_0" / "4")
    assert dense.input_width == plain.input_width
    assert dense.output_name == plain.output_name
    assert dense.dense == plain.dense  # the same layer files and activations, relative to the version folder
    plain_files, alone_files = _files(tmp_path / "plain"), _files(tmp_path / "alone")
    # Weights are byte-identical, only moved; PS dumps are unchanged; the entry keeps just its spec.
    for name, digest in plain_files.items():
        if name.startswith("entry/4/dense/"):
            assert alone_files[name.replace("entry/", "dense_0/", 1)] == digest
            assert name not in alone_files
        elif name.startswith("ps_"):
            assert alone_files[name] == digest
    assert sorted(n for n in alone_files if n.startswith("entry/")) == ["entry/4/serving_spec.json"]


def test_dense_spec_errors_name_the_key(tmp_path: Path) -> None:
    write_demo(DemoOptions(out=tmp_path, rows=5, dense_alone=True))
    folder = tmp_path / "dense_0" / "1"
    good = json.loads((folder / DENSE_SPEC_FILE).read_text())
    for mutate, message in [
        (lambda d: d.pop("input_width"), "missing key 'input_width'"),
        (lambda d: d.update(input_width=0), "'input_width' must be positive"),
        (lambda d: d.update(dense={"backend": "remote", "sub_model": "dense_0"}), "backend must be one of numpy, onnx"),
        (lambda d: d["dense"]["layers"][1].update(activation="gelu"), r"dense.layers\[1\]: activation"),
        (lambda d: d.update(format_version=2), "unsupported format_version 2"),
    ]:
        data = json.loads(json.dumps(good))
        mutate(data)
        with pytest.raises(InvalidArgumentError, match=message):
            parse_dense_model_spec(data, "d.json")
    with pytest.raises(NotFoundError, match=DENSE_SPEC_FILE):
        load_dense_model_spec(tmp_path)
    (tmp_path / DENSE_SPEC_FILE).write_text("[]")
    with pytest.raises(InvalidArgumentError, match="top level must be a JSON object"):
        load_dense_model_spec(tmp_path)
