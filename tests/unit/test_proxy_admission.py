"""The proxy's bounds that are not the core's: the byte budget, and the REST flags that size it."""

from __future__ import annotations

import argparse

import pytest

from monolith_serving.core.byte_budget import ByteBudget
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.rest_gateway import RestConfig
from monolith_serving.proxy.config import config_from_args
from monolith_serving.proxy.main import configure


def test_a_byte_budget_takes_what_fits_and_never_waits() -> None:
    budget = ByteBudget(100)
    assert budget.try_take(60) and budget.in_use_bytes == 60
    assert not budget.try_take(41) and budget.in_use_bytes == 60  # refused: nothing taken
    assert budget.try_take(40) and budget.in_use_bytes == 100
    budget.give_back(60)
    assert budget.try_take(41) and budget.in_use_bytes == 81
    with pytest.raises(ValueError, match="capacity_bytes"):
        ByteBudget(0)


def _rest(*argv: str) -> RestConfig:
    parser = argparse.ArgumentParser()
    configure(parser)
    rest = config_from_args(parser.parse_args(["--entry_targets", "a:1", "--rest_api_port", "8501", *argv]), {}).rest
    assert rest is not None
    return rest


def test_rest_body_flags_default_to_32_mib_bodies_within_a_64_mib_budget() -> None:
    assert (_rest().max_body_bytes, _rest().body_budget_bytes) == (32 << 20, 64 << 20)
    # A larger body limit raises the budget only as far as one such body: memory is the budget's to set.
    assert _rest("--rest_api_max_body_bytes", str(256 << 20)).body_budget_bytes == 256 << 20
    assert _rest("--rest_api_max_body_bytes", str(1 << 20)).body_budget_bytes == 64 << 20
    explicit = _rest("--rest-api-max-body-bytes", "1000", "--rest-api-body-budget-bytes", "5000")
    assert (explicit.max_body_bytes, explicit.body_budget_bytes) == (1000, 5000)
    with pytest.raises(InvalidArgumentError, match="must be at least --rest_api_max_body_bytes"):
        _rest("--rest_api_max_body_bytes", "1000", "--rest_api_body_budget_bytes", "999")
