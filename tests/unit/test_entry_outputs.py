"""Named outputs (the serving spec's ``outputs``): the entry splits the dense network's columns into heads,
honours ``output_filter`` and refuses a network whose width does not match. Lookups are ``RecordingLookup``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_entry_dense import SPEC, build_onnx
from test_entry_model import Gate, RecordingLookup, inputs_for, make_model

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import FailedPreconditionError, InvalidArgumentError
from monolith_serving.core.serving_spec import DenseBackend, DenseSpec, OutputSpec, load_serving_spec
from monolith_serving.entry.dense import load_dense
from monolith_serving.entry.model import EntryModel
from monolith_serving.entry.outputs import EntryOutputs


@pytest.fixture()
def heads_export(tmp_path: Path) -> Path:
    write_demo(DemoOptions(out=tmp_path, num_ps=2, rows=50, version=1, heads=("ctr", "cvr")))
    return tmp_path


async def _served(export: Path) -> EntryModel:
    gate = Gate()
    gate.ready = {1}
    model = make_model(export, gate, RecordingLookup())
    await model.refresh()
    return model


def test_every_head_is_its_column_of_the_network(heads_export: Path) -> None:
    async def scenario() -> None:
        model = await _served(heads_export)
        inputs = inputs_for(heads_export, batch=5)
        result = await model.predict(name="entry", version=None, signature_name="", inputs=inputs)
        assert sorted(result.outputs) == ["ctr", "cvr"]
        # The whole answer of the same network, as a one-output entry would give it.
        loaded = model.resolve("entry", None)
        batch = model.parse(loaded, inputs)
        plan = loaded.pooler.plan(batch)
        embeddings = await RecordingLookup().lookup(1, plan.unique_fids, loaded.dims, 1.0)
        whole = load_dense(loaded.spec, loaded.path).predict(loaded.pooler.assemble(batch, plan, embeddings.values))
        assert whole.shape == (5, 2)
        for column, name in enumerate(("ctr", "cvr")):
            assert result.outputs[name].shape == (5, 1) and result.outputs[name].dtype == np.float32
            np.testing.assert_array_equal(result.outputs[name], whole[:, column : column + 1])

    asyncio.run(scenario())


def test_output_filter_picks_heads_and_an_unknown_name_is_invalid_argument(heads_export: Path) -> None:
    async def scenario() -> None:
        model = await _served(heads_export)
        inputs = inputs_for(heads_export)
        both = await model.predict(name="entry", version=None, signature_name="", inputs=inputs)
        only = await model.predict(name="entry", version=None, signature_name="", inputs=inputs, output_filter=["cvr"])
        assert list(only.outputs) == ["cvr"]
        np.testing.assert_array_equal(only.outputs["cvr"], both.outputs["cvr"])
        for wrong in (["scores"], ["ctr", "ctrr"]):
            with pytest.raises(InvalidArgumentError, match=rf"unknown output\(s\) \['{wrong[-1]}'\].*ctr, cvr"):
                await model.predict(name="entry", version=None, signature_name="", inputs=inputs, output_filter=wrong)

    asyncio.run(scenario())


def test_a_single_output_model_answers_the_network_itself_under_output_name(tmp_path: Path) -> None:
    write_demo(DemoOptions(out=tmp_path, num_ps=2, rows=50, version=1))

    async def scenario() -> None:
        model = await _served(tmp_path)
        inputs = inputs_for(tmp_path)
        result = await model.predict(name="entry", version=None, signature_name="", inputs=inputs)
        filtered = await model.predict(
            name="entry", version=None, signature_name="", inputs=inputs, output_filter=["scores"]
        )
        assert list(result.outputs) == list(filtered.outputs) == ["scores"]
        assert result.outputs["scores"].shape == (3, 1)
        with pytest.raises(InvalidArgumentError, match=r"unknown output\(s\) \['ctr'\]"):
            await model.predict(name="entry", version=None, signature_name="", inputs=inputs, output_filter=["ctr"])

    asyncio.run(scenario())


def test_widths_that_do_not_sum_to_the_network_fail_the_load_naming_the_key(heads_export: Path) -> None:
    path = heads_export / "entry" / "1" / "serving_spec.json"
    data = json.loads(path.read_text())
    data["outputs"][1]["width"] = 2
    path.write_text(json.dumps(data))

    async def scenario() -> None:
        model = await _served(heads_export)
        (status,) = model.status("entry")
        assert status.error is not None
        assert "'outputs' widths sum to 3 but the dense network answers 2 columns" in status.error.message
        assert str(path) in status.error.message

    asyncio.run(scenario())


def test_a_remote_answer_of_the_wrong_width_is_failed_precondition(heads_export: Path) -> None:
    outputs = EntryOutputs.of(load_serving_spec(heads_export / "entry" / "1"))
    chosen = outputs.select(())
    assert [c.name for c in chosen] == ["ctr", "cvr"]
    with pytest.raises(FailedPreconditionError, match=r"answered shape \[4, 3\].*sum to 2"):
        outputs.answer(np.zeros((4, 3), dtype=np.float32), chosen)
    answered = outputs.answer(np.arange(8, dtype=np.float32).reshape(4, 2), outputs.select(["cvr", "ctr"]))
    assert list(answered) == ["ctr", "cvr"]  # the spec's order, whatever the filter's
    np.testing.assert_array_equal(answered["cvr"], [[1], [3], [5], [7]])


def test_an_onnx_network_is_split_into_heads_and_its_width_checked_at_load(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install '.[onnx]')")
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 2)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    build_onnx(tmp_path / "dense.onnx", w, b)
    heads = (OutputSpec("ctr", 1), OutputSpec("cvr", 1))
    spec = dataclasses.replace(SPEC, dense=DenseSpec(DenseBackend.ONNX, file="dense.onnx"), outputs=heads)
    network = load_dense(spec, tmp_path)
    outputs = EntryOutputs.of(spec)
    outputs.check_network(network.output_width, str(tmp_path))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    answered = outputs.answer(network.predict(x), outputs.select(()))
    expected = 1 / (1 + np.exp(-(x @ w + b)))
    np.testing.assert_allclose(np.hstack([answered["ctr"], answered["cvr"]]), expected, rtol=1e-5)
    wide = EntryOutputs.of(dataclasses.replace(spec, outputs=(*heads, OutputSpec("extra", 1))))
    with pytest.raises(InvalidArgumentError, match="'outputs' widths sum to 3 but the dense network answers 2"):
        wide.check_network(network.output_width, str(tmp_path))
