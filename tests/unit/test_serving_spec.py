from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from monolith_serving.core.demo_export import DemoOptions, demo_spec
from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.serving_spec import load_serving_spec, parse_serving_spec, write_serving_spec


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
