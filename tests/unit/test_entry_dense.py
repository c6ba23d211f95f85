"""The dense backends: numpy MLP from .npy files, ONNX graph built here with onnx.helper."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from entry_fakes import NoLookup

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.model_state import ModelState
from monolith_serving.core.serving_spec import (
    DenseBackend,
    DenseInputSpec,
    DenseSpec,
    LayerSpec,
    ServingSpec,
    TableSpec,
)
from monolith_serving.entry.dense import load_dense
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModel, EntryModelConfig, VersionStatus

LAYERS = (LayerSpec("w0.npy", "b0.npy", "tanh"), LayerSpec("w1.npy", "b1.npy", "sigmoid"))
SPEC = ServingSpec(
    model_name="t",
    num_ps=1,
    tables=(TableSpec("a", 2),),
    features=(),
    dense_inputs=(DenseInputSpec("d", 3),),
    dense=DenseSpec(DenseBackend.NUMPY, layers=LAYERS),
)


def write_weights(folder: Path, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    shapes = [(3, 4), (4, 2)]
    weights = []
    for (rows, cols), layer in zip(shapes, LAYERS, strict=True):
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        b = rng.standard_normal(cols).astype(np.float32)
        np.save(folder / layer.weight, w)
        np.save(folder / layer.bias, b)
        weights.append((w, b))
    return weights


def scalar_reference(x: list[float], weights: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """Plain-Python forward pass (tanh then sigmoid)."""
    h = x
    for k, (w, b) in enumerate(weights):
        z = [sum(h[i] * float(w[i, j]) for i in range(len(h))) + float(b[j]) for j in range(w.shape[1])]
        h = [math.tanh(v) for v in z] if k == 0 else [1 / (1 + math.exp(-v)) for v in z]
    return h


def test_numpy_mlp_matches_a_scalar_forward_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    weights = write_weights(tmp_path, rng)
    model = load_dense(SPEC, tmp_path)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    got = model.predict(x)
    assert got.shape == (5, 2) and got.dtype == np.float32
    expected = [scalar_reference([float(v) for v in row], weights) for row in x]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_numpy_mlp_rejects_mismatched_shapes_and_missing_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    write_weights(tmp_path, rng)
    np.save(tmp_path / "b1.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match=r"bias shape \[3\], expected \[2\]"):
        load_dense(SPEC, tmp_path)
    np.save(tmp_path / "w0.npy", np.zeros((5, 4), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="does not take an input of width 3"):
        load_dense(SPEC, tmp_path)
    (tmp_path / "w0.npy").unlink()
    with pytest.raises(NotFoundError, match="w0.npy"):
        load_dense(SPEC, tmp_path)


def build_onnx(path: Path, w: np.ndarray, b: np.ndarray) -> None:
    onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install '.[onnx]')")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["y"]),
        ],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_onnx_backend_matches_numpy(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install '.[onnx]')")
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 2)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    build_onnx(tmp_path / "dense.onnx", w, b)
    spec = dataclasses.replace(SPEC, dense=DenseSpec(DenseBackend.ONNX, file="dense.onnx"))
    model = load_dense(spec, tmp_path)
    x = rng.standard_normal((7, 3)).astype(np.float32)
    got = model.predict(x)
    assert model.output_width == 2
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-(x @ w + b))), rtol=1e-5, atol=1e-6)
    wide = dataclasses.replace(spec, dense_inputs=(DenseInputSpec("d", 4),))
    with pytest.raises(InvalidArgumentError, match=r"does not take \[batch, 4\]"):
        load_dense(wide, tmp_path)
    with pytest.raises(NotFoundError, match="missing.onnx"):
        load_dense(dataclasses.replace(spec, dense=DenseSpec(DenseBackend.ONNX, file="missing.onnx")), tmp_path)


# -- file names from the export stay inside the version folder ----------------------------------------


def _version_with_weights(tmp_path: Path) -> Path:
    """``tmp_path/m/1`` holding good weights; ``tmp_path/m/outside.npy`` and ``tmp_path/elsewhere.npy`` hold a good
    first-layer weight too, so only the path check can refuse a spec naming them."""
    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)
    weights = write_weights(version_dir, np.random.default_rng(6))
    np.save(tmp_path / "m" / "outside.npy", weights[0][0])
    np.save(tmp_path / "elsewhere.npy", weights[0][0])
    return version_dir


def _with_layer0(spec: ServingSpec, **names: str) -> ServingSpec:
    layers = (dataclasses.replace(LAYERS[0], **names), *LAYERS[1:])
    return dataclasses.replace(spec, dense=DenseSpec(DenseBackend.NUMPY, layers=layers))


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("weight", "../outside.npy"),
        ("weight", "dense/../../outside.npy"),
        ("bias", "../outside.npy"),
        ("weight", "ABSOLUTE"),
    ],
)
def test_a_dense_weight_outside_the_version_folder_is_refused_naming_the_field(
    tmp_path: Path, field: str, name: str
) -> None:
    version_dir = _version_with_weights(tmp_path)
    if name == "ABSOLUTE":
        name = str(tmp_path / "elsewhere.npy")
    with pytest.raises(InvalidArgumentError, match=rf"dense\.layers\[0\]\.{field} ") as info:
        load_dense(_with_layer0(SPEC, **{field: name}), version_dir)
    assert repr(name) in info.value.message


def test_a_symlink_leading_out_of_the_version_folder_is_refused(tmp_path: Path) -> None:
    version_dir = _version_with_weights(tmp_path)
    (version_dir / "link.npy").symlink_to(tmp_path / "elsewhere.npy")
    with pytest.raises(InvalidArgumentError, match=r"dense\.layers\[0\]\.weight 'link\.npy': resolves outside"):
        load_dense(_with_layer0(SPEC, weight="link.npy"), version_dir)


def test_names_inside_the_version_folder_still_load_through_a_symlinked_base(tmp_path: Path) -> None:
    (_version_with_weights(tmp_path) / "sub").mkdir()
    (tmp_path / "base").symlink_to(tmp_path / "m")  # a base path that is itself a link resolves with its files
    assert load_dense(_with_layer0(SPEC, weight="./sub/../w0.npy"), tmp_path / "base" / "1").output_width == 2


@pytest.mark.parametrize("name", ["../dense.onnx", "/etc/dense.onnx"])
def test_an_onnx_file_outside_the_version_folder_is_refused_naming_the_field(tmp_path: Path, name: str) -> None:
    spec = dataclasses.replace(SPEC, dense=DenseSpec(DenseBackend.ONNX, file=name))
    with pytest.raises(InvalidArgumentError, match=r"dense\.file") as info:
        load_dense(spec, tmp_path / "1")
    assert name in info.value.message


def test_an_entry_version_naming_a_file_outside_fails_to_load_with_that_error(tmp_path: Path) -> None:
    write_demo(DemoOptions(out=tmp_path, num_ps=2, rows=10, version=1))
    version_dir = tmp_path / "entry" / "1"
    shutil.copy(version_dir / "dense" / "layer0_w.npy", tmp_path / "entry" / "outside.npy")
    spec_file = version_dir / "serving_spec.json"
    spec = json.loads(spec_file.read_text())
    spec["dense"]["layers"][0]["weight"] = "../outside.npy"
    spec_file.write_text(json.dumps(spec))

    async def statuses() -> list[VersionStatus]:
        model = EntryModel(
            config=EntryModelConfig(name="entry", base_path=tmp_path / "entry"),
            num_ps=2,
            lookup=NoLookup(),
            ps_ready=lambda version: True,
            metrics=EntryMetrics(),
        )
        await model.refresh()
        return model.status("entry")

    (status,) = asyncio.run(statuses())
    assert status.version == 1 and status.state is ModelState.END
    assert isinstance(status.error, InvalidArgumentError)
    assert "dense.layers[0].weight '../outside.npy'" in status.error.message
