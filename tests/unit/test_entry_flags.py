"""``monolith-serving entry`` coalescing flags: defaults on, both spellings, a bad value refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.entry.main import configure, server_config_from_args
from monolith_serving.entry.ps_coalesce import CoalesceConfig
from monolith_serving.entry.request_coalesce import RequestCoalescing


def _parse(export: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(["--model_base_path", str(export / "entry"), "--ps_targets", "a:1,b:2", *argv])


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    write_demo(DemoOptions(out=tmp_path, num_ps=2, rows=10, version=1))
    return tmp_path


def test_both_coalescings_default_on(export: Path) -> None:
    config = server_config_from_args(_parse(export), {})
    assert config.coalesce == CoalesceConfig() and config.coalesce.enabled
    assert config.coalesce_requests == RequestCoalescing() and config.coalesce_requests.enabled


def test_predict_coalescing_flags_in_both_spellings(export: Path) -> None:
    config = server_config_from_args(_parse(export, "--coalesce-requests", "false", "--coalesce_max_rows", "32"), {})
    assert config.coalesce_requests == RequestCoalescing(enabled=False, max_rows=32)


def test_a_max_rows_below_one_is_refused_naming_the_flag(export: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="--coalesce_max_rows"):
        server_config_from_args(_parse(export, "--coalesce_max_rows", "0"), {})
