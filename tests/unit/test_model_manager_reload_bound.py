"""Each reload RPC is bounded by ``reload_timeout_s``, far below the rollout timeout.

Our PS answers HandleReloadConfigRequest only once its versions settled, and finishes the change when its caller
stops waiting. The coordinator used to give every reload what was left of the rollout deadline (up to 600 s): one
replica that did not answer held up the phase's status polls that long. Now a reload that times out counts as
sent and status polls follow the load; it is not sent again while the replica loads (a duplicate would retry a
failed load and hide its error), only when the replica shows no sign of it after ``resend_interval_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from model_manager_fakes import MODEL, FakeClock, FakeCluster

from monolith_serving.core.errors import DeadlineExceededError
from monolith_serving.model_manager.control import LoadConfig, Replica, VersionState, VersionStatus
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.rollout import (
    AbortCause,
    ModelState,
    ModelTarget,
    Outcome,
    RolloutConfig,
    RolloutCoordinator,
)

ROLLOUT_TIMEOUT_S = 600.0
RELOAD_TIMEOUT_S = 30.0
LOAD_S = 200.0  # how long version 2 takes to load on every PS (on the fake clock)


class SlowLoadCluster(FakeCluster):
    """Like our PS: a reload answers once the versions settled, so one whose versions still load runs into the
    caller's deadline (DeadlineExceededError after ``timeout_s``) while the load goes on. Loads of ``slow_ps``
    finish ``LOAD_S`` after they started, AVAILABLE or, for ``fail_late``, END with an error. A reload to an
    address in ``lose`` never arrives (it times out too)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(num_ps=2, ps_replicas=1, entries=1)
        self.clock = clock
        self.timeouts: list[float] = []
        self.lose: set[str] = set()
        self.fail_late: set[int] = set()
        self.started: dict[tuple[str, int], float] = {}

    async def reload(self, address: str, configs: Sequence[LoadConfig], timeout_s: float) -> None:
        self.timeouts.append(timeout_s)
        if address in self.lose:
            self.lose.discard(address)
            self.clock.now += timeout_s
            raise DeadlineExceededError(f"HandleReloadConfigRequest on {address}: DEADLINE_EXCEEDED (lost)")
        await super().reload(address, configs, timeout_s)
        loading = [s.version for n in self.at(address) for s in n.versions.values() if s.state is VersionState.LOADING]
        for version in loading:
            self.started.setdefault((address, version), self.clock.now)
        if loading:
            self.clock.now += timeout_s
            raise DeadlineExceededError(f"HandleReloadConfigRequest on {address}: DEADLINE_EXCEEDED")

    async def status(self, replica: Replica, served_name: str, timeout_s: float) -> list[VersionStatus]:
        for node in self.at(replica.address):
            for version, status in list(node.versions.items()):
                began = self.started.get((replica.address, version))
                if status.state is VersionState.LOADING and began is not None and self.clock.now >= began + LOAD_S:
                    error = "corrupt dump" if version in self.fail_late else ""
                    node.versions[version] = VersionStatus(
                        version, VersionState.END if error else VersionState.AVAILABLE, error
                    )
        return await super().status(replica, served_name, timeout_s)

    def reloads_to(self, address: str, versions: tuple[int, ...]) -> int:
        return sum(1 for a, configs in self.requests if a == address and configs[0].versions == versions)


def make() -> tuple[SlowLoadCluster, RolloutCoordinator, ModelState, FakeClock]:
    clock = FakeClock()
    cluster = SlowLoadCluster(clock)
    coordinator = RolloutCoordinator(
        control=cluster,
        config=RolloutConfig(
            timeout_s=ROLLOUT_TIMEOUT_S,
            poll_interval_s=1.0,
            drain_s=0.0,
            resend_interval_s=5.0,
            reload_timeout_s=RELOAD_TIMEOUT_S,
        ),
        metrics=ModelManagerMetrics(),
        clock=clock,
        wall=clock,
        sleep=clock.sleep,
    )
    state = ModelState(ModelTarget(MODEL, cluster.base_dir, cluster.num_ps))
    asyncio.run(coordinator.rollout(state, 1))
    cluster.requests.clear()
    cluster.timeouts.clear()
    cluster.slow_ps.add(2)
    return cluster, coordinator, state, clock


def test_a_reload_rpc_is_bounded_far_below_the_rollout_timeout_and_a_long_load_is_followed_by_status() -> None:
    cluster, coordinator, state, clock = make()
    started = clock.now
    record = asyncio.run(coordinator.rollout(state, 2))
    assert record.outcome is Outcome.SUCCEEDED, record.reason
    assert cluster.timeouts and max(cluster.timeouts) <= RELOAD_TIMEOUT_S, cluster.timeouts
    # Each PS was sent {1, 2} once: not again while it loaded, although its reload did not answer.
    assert [cluster.reloads_to(a, (1, 2)) for a in ("ps0-0:1", "ps1-0:1")] == [1, 1], cluster.requests
    assert clock.now - started < LOAD_S + 60  # followed by status polls, done soon after the loads
    assert cluster.violations == []


def test_a_load_failing_after_its_reload_timed_out_still_aborts_as_a_load_failure() -> None:
    cluster, coordinator, state, _clock = make()
    cluster.fail_late.add(2)
    record = asyncio.run(coordinator.rollout(state, 2))
    assert record.outcome is Outcome.FAILED and record.cause is AbortCause.LOAD_FAILED, record
    assert "corrupt dump" in record.reason
    assert [cluster.reloads_to(a, (1, 2)) for a in ("ps0-0:1", "ps1-0:1")] == [1, 1], cluster.requests
    assert state.serving == 1 and cluster.violations == []


def test_a_reload_that_never_arrived_is_sent_again_after_the_resend_interval() -> None:
    cluster, coordinator, state, clock = make()
    cluster.slow_ps.clear()
    cluster.lose.add("ps1-0:1")
    started = clock.now
    record = asyncio.run(coordinator.rollout(state, 2))
    assert record.outcome is Outcome.SUCCEEDED, record.reason
    assert cluster.reloads_to("ps1-0:1", (1, 2)) == 1  # the lost one is not in ``requests``; the second arrived
    assert clock.now - started < 2 * RELOAD_TIMEOUT_S + 30  # not the rollout timeout
    assert cluster.violations == []
