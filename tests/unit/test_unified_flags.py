"""``monolith-serving unified`` takes the entry's PS-lookup coalescing flags and hands them to its entry core."""

from __future__ import annotations

import argparse

from monolith_serving.entry.ps_coalesce import CoalesceConfig
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
