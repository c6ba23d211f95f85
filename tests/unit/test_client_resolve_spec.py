"""``client --spec``: every place a serving spec can be named, and a clear error for a file that is not one."""

from __future__ import annotations

from pathlib import Path

import pytest

from monolith_serving.client.call_inputs import resolve_spec
from monolith_serving.core.demo_export import DemoOptions, demo_spec, write_demo
from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError
from monolith_serving.core.serving_spec import SPEC_FILE, write_spec_object


def test_the_spec_is_found_from_a_file_a_version_an_entry_folder_or_an_export(tmp_path: Path) -> None:
    export = tmp_path / "export"
    write_demo(DemoOptions(out=export, num_ps=2))
    expected = demo_spec(DemoOptions(out=export, num_ps=2))
    version = export / "entry" / "1"
    renamed = tmp_path / "spec.json"
    renamed.write_text((version / SPEC_FILE).read_text())
    for path in (version / SPEC_FILE, renamed, version, export / "entry", export):
        assert resolve_spec(path) == expected, path


def test_a_file_that_is_not_json_names_itself(tmp_path: Path) -> None:
    bad = tmp_path / "spec.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match=r"spec\.json: not valid JSON"):
        resolve_spec(bad)
    write_spec_object(bad, {"format_version": 1})
    with pytest.raises(InvalidArgumentError, match="spec.json"):
        resolve_spec(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InvalidArgumentError, match="top level must be a JSON object"):
        resolve_spec(bad)


def test_a_folder_without_versions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MonolithServingError, match="no entry version"):
        resolve_spec(tmp_path)
