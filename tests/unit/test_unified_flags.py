"""``monolith-serving unified`` takes the entry's coalescing flags (PS lookups, Predicts) for its entry core."""

from __future__ import annotations

import argparse

import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.entry.ps_coalesce import CoalesceConfig
from monolith_serving.entry.request_coalesce import RequestCoalescing
from monolith_serving.unified.main import config_from_args, configure


def _config(*argv: str) -> CoalesceConfig:
    parser = argparse.ArgumentParser()
    configure(parser)
    return config_from_args(parser.parse_args(["--agent_address", "localhost:1", *argv]), {}).coalesce


def test_coalescing_defaults_on_like_the_entry() -> None:
    assert _config() == CoalesceConfig()
    assert CoalesceConfig().enabled


def test_coalescing_flags_in_both_spellings() -> None:
    assert _config("--coalesce_ps_lookups", "false", "--coalesce-max-fids", "100") == CoalesceConfig(
        enabled=False, max_fids=100
    )


def test_predict_coalescing_flags_reach_the_unified_servers_entry_core() -> None:
    parser = argparse.ArgumentParser()
    configure(parser)
    base = ["--agent_address", "localhost:1"]
    assert config_from_args(parser.parse_args(base), {}).coalesce_requests == RequestCoalescing()
    config = config_from_args(
        parser.parse_args([*base, "--coalesce-requests", "false", "--coalesce_max_rows", "64"]), {}
    )
    assert config.coalesce_requests == RequestCoalescing(enabled=False, max_rows=64)


def test_the_agent_is_the_flag_else_localhost_port2() -> None:
    parser = argparse.ArgumentParser()
    configure(parser)
    bare = parser.parse_args([])
    assert config_from_args(bare, {"PORT2": "9123"}).agent_address == "localhost:9123"
    given = parser.parse_args(["--agent_address", "10.0.0.1:7"])
    assert config_from_args(given, {"PORT2": "9123"}).agent_address == "10.0.0.1:7"
    for environ in ({}, {"PORT2": ""}):  # empty counts as unset
        with pytest.raises(InvalidArgumentError, match=r"set \$PORT2"):
            config_from_args(bare, environ)
