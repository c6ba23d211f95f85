"""entry.ps_client.ReplicaHealth: failing replicas go last for a cooldown, and dead addresses are not kept forever."""

from __future__ import annotations

from monolith_serving.entry.ps_client import ReplicaHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_lasts_the_cooldown_and_a_success_ends_it() -> None:
    clock = Clock()
    health = ReplicaHealth(cooldown_s=5.0, clock=clock)
    health.failed("a:1")
    assert health.is_failing("a:1") and not health.is_failing("b:1")
    clock.now += 4.9
    assert health.is_failing("a:1")
    clock.now += 0.1
    assert not health.is_failing("a:1")
    health.failed("a:1")
    health.succeeded("a:1")
    assert not health.is_failing("a:1") and health.remembered() == 0


def test_addresses_that_never_come_back_are_dropped_once_cooled_down() -> None:
    clock = Clock()
    health = ReplicaHealth(cooldown_s=5.0, clock=clock)
    for pod in range(100):  # restarted pods, each at a new address, each failing once and then gone
        health.failed(f"10.0.{pod}.1:8500")
        clock.now += 1.0
    assert health.remembered() == 5  # only the ones still cooling down
    assert health.is_failing("10.0.99.1:8500") and not health.is_failing("10.0.0.1:8500")
