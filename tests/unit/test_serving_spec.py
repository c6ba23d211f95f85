from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from monolith_serving.core.demo_export import DemoOptions, demo_spec
from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.serving_spec import (
    OutputSpec,
    load_serving_spec,
    parse_serving_spec,
    write_serving_spec,
)


def _demo_json() -> dict[str, Any]:
    return demo_spec(DemoOptions(out=Path("/unused"))).to_json()


def test_round_trip(tmp_path: Path) -> None:
    spec = demo_spec(DemoOptions(out=tmp_path))
    write_serving_spec(tmp_path, spec)
    assert load_serving_spec(tmp_path) == spec
    # user: 8 * (1 + 1 + 2), item: 12 * (1 + 1 + 2), ctx: 2
    assert spec.input_width == 32 + 48 + 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("tables"), "missing key 'tables'"),
        (lambda d: d["features"][0].update(pooling="max"), r"features\[0\]: pooling"),
        (lambda d: d["features"][1].update(table="nope"), r"features\[1\]: unknown table 'nope'"),
        (lambda d: d["tables"][0].update(dim="8"), r"tables\[0\]: 'dim' must be an integer"),
        (lambda d: d["dense"]["layers"][0].update(activation="gelu"), r"dense.layers\[0\]: activation"),
        (lambda d: d.update(format_version=9), "unsupported format_version 9"),
        (lambda d: d["features"][2].update(first_n=0), r"features\[2\]: first_n must be positive"),
    ],
)
def test_bad_spec_names_the_key(mutate: Any, message: str) -> None:
    data = _demo_json()
    mutate(data)
    with pytest.raises(InvalidArgumentError, match=message):
        parse_serving_spec(data, "spec.json")


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="serving_spec.json"):
        load_serving_spec(tmp_path)
    (tmp_path / "serving_spec.json").write_text("{nope")
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        load_serving_spec(tmp_path)
    (tmp_path / "serving_spec.json").write_text(json.dumps([1]))
    with pytest.raises(InvalidArgumentError, match="JSON object"):
        load_serving_spec(tmp_path)


def _heads_json(*heads: tuple[str, int]) -> dict[str, Any]:
    data = _demo_json()
    data.pop("output_name")
    data["outputs"] = [{"name": name, "width": width} for name, width in heads]
    return data


def test_outputs_split_the_network_into_named_heads_and_round_trip(tmp_path: Path) -> None:
    spec = parse_serving_spec(_heads_json(("ctr", 1), ("cvr", 2)))
    assert spec.outputs == (OutputSpec("ctr", 1), OutputSpec("cvr", 2))
    assert spec.to_json()["outputs"] == [{"name": "ctr", "width": 1}, {"name": "cvr", "width": 2}]
    assert "output_name" not in spec.to_json()  # the spec would not parse again with both keys
    write_serving_spec(tmp_path, spec)
    assert load_serving_spec(tmp_path) == spec


def test_a_spec_without_outputs_writes_no_outputs_key() -> None:
    data = _demo_json()
    assert "outputs" not in data and data["output_name"] == "scores"
    assert parse_serving_spec(data).outputs == ()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(output_name="scores"), "either 'output_name'.*or 'outputs'.*not both"),
        (lambda d: d.update(outputs=[]), "'outputs' must list at least one output"),
        (lambda d: d.update(outputs={"ctr": 1}), "'outputs' must be list"),
        (lambda d: d["outputs"].__setitem__(1, "cvr"), r"outputs\[1\]: must be an object"),
        (lambda d: d["outputs"][1].update(name=""), r"outputs\[1\]: 'name' must not be empty"),
        (lambda d: d["outputs"][1].update(name="ctr"), r"outputs\[1\]: output name 'ctr' is given twice"),
        (lambda d: d["outputs"][0].update(width=0), r"outputs\[0\]: 'width' must be positive"),
        (lambda d: d["outputs"][0].update(width=1.0), r"outputs\[0\]: 'width' must be an integer"),
        (lambda d: d["outputs"][0].pop("name"), r"outputs\[0\]: missing key 'name'"),
    ],
)
def test_bad_outputs_name_the_file_and_key(mutate: Any, message: str) -> None:
    data = _heads_json(("ctr", 1), ("cvr", 1))
    mutate(data)
    with pytest.raises(InvalidArgumentError, match=f"^spec.json.*{message}"):
        parse_serving_spec(data, "spec.json")


def test_a_spec_object_with_both_output_name_and_outputs_is_refused() -> None:
    spec = demo_spec(DemoOptions(out=Path("/unused")))
    with pytest.raises(InvalidArgumentError, match="not both"):
        replace(spec, output_name="logits", outputs=(OutputSpec("ctr", 1),))


def test_inputs_name_the_predict_inputs_a_model_takes(tmp_path: Path) -> None:
    data = _demo_json()
    assert "inputs" not in data  # the default (all three) is not written: older specs stay byte-identical
    assert parse_serving_spec(data).inputs == ("instances", "example_batch", "examples")
    data["inputs"] = ["examples", "example_batch"]
    spec = parse_serving_spec(data)
    assert spec.inputs == ("example_batch", "examples")  # in the signature's order
    write_serving_spec(tmp_path, spec)
    assert load_serving_spec(tmp_path) == spec
    for bad in ([], ["instances", "instances"], ["features"], "instances"):
        data["inputs"] = bad
        with pytest.raises(InvalidArgumentError, match="'inputs'"):
            parse_serving_spec(data, "spec.json")
