"""``client profile`` fails (exit status 1) when any request of the load test failed, not only when all did.

The end-to-end exit statuses are in tests/integration/test_client_cli.py; this is the judgement on a summary."""

from __future__ import annotations

from monolith_serving.client.calls import profile_failure
from monolith_serving.client.profile import summarize


def test_a_load_test_without_errors_succeeds() -> None:
    assert profile_failure(summarize([0.001] * 10, 0, workers=2, elapsed_s=1.0, first_error="")) is None


def test_one_failed_request_fails_the_load_test_with_the_first_error_and_the_counts() -> None:
    result = summarize([0.001] * 9, 1, workers=2, elapsed_s=1.0, first_error="DEADLINE_EXCEEDED: Deadline Exceeded")
    assert profile_failure(result) == "DEADLINE_EXCEEDED: Deadline Exceeded (1 of 10 requests failed)"


def test_a_load_test_in_which_every_request_failed_fails() -> None:
    result = summarize([], 5, workers=2, elapsed_s=1.0, first_error="NOT_FOUND: no such model")
    assert profile_failure(result) == "NOT_FOUND: no such model (5 of 5 requests failed)"
