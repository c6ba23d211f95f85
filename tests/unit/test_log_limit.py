"""core.log_limit: per-request log lines held to one per key per interval, with a count of what was left out."""

from __future__ import annotations

import logging

import pytest

from monolith_serving.core.log_limit import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_interval_then_a_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.limit"), logging.WARNING, interval_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.limit"):
        for i in range(2000):
            limited.log("Predict", "malformed request %d", i)
        limited.log("GetModelStatus", "malformed request %s", "other")
        clock.now += 10.0
        limited.log("Predict", "malformed request %d", 2000)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "malformed request 0",
        "malformed request other",
        "malformed request 2000 (and 1999 more like it in the last 10 s)",
    ]


def test_nothing_is_formatted_or_counted_below_the_loggers_level(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("test.limit.quiet"), logging.DEBUG, clock=Clock())
    with caplog.at_level(logging.INFO, logger="test.limit.quiet"):
        limited.log("k", "hidden")
    assert caplog.records == []
    assert limited._keys == {}
