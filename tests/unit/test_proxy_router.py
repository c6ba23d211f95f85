"""Power-of-two-choices and outlier ejection (no transport, injected clock)."""

from __future__ import annotations

import random
from collections import Counter

from monolith_serving.proxy.router import OutlierPolicy, Router


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_two_choices_prefers_fewer_outstanding() -> None:
    router = Router(OutlierPolicy(), rng=random.Random(1))
    addresses = ["a:1", "b:1"]
    router.state("a:1").outstanding = 5
    picks = Counter(router.pick(addresses).address for _ in range(200))  # type: ignore[union-attr]
    assert picks == {"b:1": 200}


def test_load_spreads_over_idle_replicas() -> None:
    router = Router(OutlierPolicy(), rng=random.Random(2))
    addresses = [f"h{i}:1" for i in range(4)]
    picks = Counter(router.pick(addresses).address for _ in range(4000))  # type: ignore[union-attr]
    assert set(picks) == set(addresses)
    assert min(picks.values()) > 700


def test_exclude_and_no_other_replica() -> None:
    router = Router(OutlierPolicy())
    assert router.pick(["a:1", "b:1"], exclude="a:1").address == "b:1"  # type: ignore[union-attr]
    assert router.pick(["a:1"], exclude="a:1") is None
    assert router.pick([]) is None


def test_ejection_after_consecutive_failures_and_probe_readmission() -> None:
    clock = Clock()
    router = Router(OutlierPolicy(consecutive_failures=3, cooldown_s=5.0, max_cooldown_s=12.0), clock=clock)
    a = router.state("a:1")
    assert not router.on_failure(a)
    router.on_success(a)  # a success resets the streak
    assert not router.on_failure(a) and not router.on_failure(a)
    assert router.on_failure(a)  # third in a row
    assert a.ejected and router.ejected_count() == 1
    # Ejected replicas are skipped while another is usable.
    assert {router.pick(["a:1", "b:1"]).address for _ in range(50)} == {"b:1"}  # type: ignore[union-attr]
    assert router.due_for_probe() == []
    clock.now += 5.0
    assert router.due_for_probe() == [a]
    assert router.due_for_probe() == []  # already being probed
    router.on_probe(a, healthy=False)
    assert a.ejected and a.cooldown_s == 10.0
    clock.now += 10.0
    assert router.due_for_probe() == [a]
    router.on_probe(a, healthy=False)
    assert a.cooldown_s == 12.0  # capped
    clock.now += 12.0
    router.due_for_probe()
    router.on_probe(a, healthy=True)
    assert not a.ejected and a.consecutive_failures == 0 and router.ejected_count() == 0


def test_panic_routing_when_every_replica_is_ejected() -> None:
    router = Router(OutlierPolicy(consecutive_failures=1))
    for address in ("a:1", "b:1"):
        router.on_failure(router.state(address))
    assert router.pick(["a:1", "b:1"]) is not None


def test_forget_keeps_busy_and_listed_replicas() -> None:
    router = Router(OutlierPolicy())
    router.state("gone:1")
    router.state("busy:1").outstanding = 1
    router.state("kept:1")
    assert router.forget_except({"kept:1"}) == ["gone:1"]
