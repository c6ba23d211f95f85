"""Stopping the model manager mid-rollout, and what the next start makes of it.

A SIGTERM used to wait for the running rollout, up to ``--rollout_timeout_s`` (600 s), so Kubernetes (30 s)
and compose (20 s) SIGKILLed the manager. Now ``run`` returns within seconds: the rollout is cancelled where
it waits and leaves its persisted phase non-idle. A manager started next on the same registry and replicas
redoes an interrupted rollout (or finishes its PS cleanup) with no entry ever serving a version some PS
replica lacks (``FakeCluster.check``), and keeps a rollback that had switched every entry pinned.

These run on the real clock with a 600 s rollout timeout: a rollout waiting on a replica that never
answers would hold ``run`` for ten minutes; it must return within ``STOP_BOUND_S``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from model_manager_fakes import MODEL, FakeCluster, FakeSource

from monolith_serving.core.aio_wait import within
from monolith_serving.core.errors import UnavailableError
from monolith_serving.discovery.static import StaticDiscovery
from monolith_serving.model_manager.control import LoadConfig, ServerKind, VersionState, VersionStatus
from monolith_serving.model_manager.manager import ManagedModel, ManagerConfig, ModelManager
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.registry_state import RegistryRecorder, RolloutState, rollout_state_path
from monolith_serving.model_manager.rollout import ModelState, ModelTarget, Phase, RolloutConfig, RolloutCoordinator

BZID = "unit"
STATE_PATH = rollout_state_path(BZID, MODEL)
ROLLOUT_TIMEOUT_S = 600.0
STOP_BOUND_S = 10.0


class HookedCluster(FakeCluster):
    """Calls ``on_reload(address, configs)`` after every reload (e.g. to stop a replica at a given point)."""

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir=str(base_dir))
        self.on_reload = lambda address, configs: None

    async def reload(self, address: str, configs: Sequence[LoadConfig], timeout_s: float) -> None:
        await super().reload(address, configs, timeout_s)
        self.on_reload(address, tuple(configs))


def make_manager(
    cluster: FakeCluster, discovery: StaticDiscovery, source: FakeSource
) -> tuple[ModelManager, ModelState]:
    metrics = ModelManagerMetrics()
    coordinator = RolloutCoordinator(
        control=cluster,
        config=RolloutConfig(timeout_s=ROLLOUT_TIMEOUT_S, poll_interval_s=0.02, drain_s=0.0),
        metrics=metrics,
    )
    state = ModelState(ModelTarget(MODEL, cluster.base_dir, cluster.num_ps))
    model = ManagedModel(source=source, state=state, num_ps_fixed=True)
    manager = ModelManager(
        models=[model],
        coordinator=coordinator,
        copier=None,
        config=ManagerConfig(scan_interval_s=0.05),
        metrics=metrics,
        recorder=RegistryRecorder(discovery, BZID, declare_saved_models=False),
    )
    return manager, state


async def wait_until(what: str, predicate: object, timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)

    try:
        await within(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s} s: {what}") from None


async def run_until_stopped_in(manager: ModelManager, state: ModelState, phase: Phase) -> None:
    """Runs the manager until its rollout is in ``phase``, then sets stop; ``run`` must end within STOP_BOUND_S."""
    stop = asyncio.Event()
    running = asyncio.ensure_future(manager.run(stop))
    try:
        await wait_until(f"rollout in phase {phase.value}", lambda: state.phase is phase)
        await asyncio.sleep(0.3)  # a few polls on the replica that does not become AVAILABLE
        assert state.phase is phase
        stop.set()
        try:
            await within(asyncio.shield(running), STOP_BOUND_S)
        except TimeoutError:
            raise AssertionError(f"run did not return within {STOP_BOUND_S} s of stop (phase {phase.value})") from None
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def step_until(manager: ModelManager, what: str, predicate: object, steps: int = 50) -> None:
    for _ in range(steps):
        await manager.step()
        if predicate():  # type: ignore[operator]
            return
    raise AssertionError(f"not after {steps} steps: {what}")


def saved(discovery: StaticDiscovery) -> RolloutState:
    return RolloutState.from_json(discovery._nodes[STATE_PATH])


def on_all(cluster: FakeCluster, version: int) -> bool:
    """Every replica serves ``version`` and only it."""
    return all(
        {v for v, s in n.versions.items() if s.state is VersionState.AVAILABLE} == {version}
        for n in cluster.nodes.values()
    )


def make_cluster(tmp_path: Path, serving: int) -> HookedCluster:
    """A cluster serving ``serving`` from a base folder holding versions 1 and 2 (a rollback checks the disk)."""
    base_dir = tmp_path / MODEL
    for version in (1, 2):
        (base_dir / "entry" / str(version)).mkdir(parents=True)
    cluster = HookedCluster(base_dir)
    for node in cluster.nodes.values():
        node.versions = {serving: VersionStatus(serving, VersionState.AVAILABLE)}
    return cluster


@pytest.mark.parametrize("phase", [Phase.PS_LOADING, Phase.ENTRY_SWITCHING, Phase.PS_CLEANUP, Phase.ABORTING])
def test_stop_interrupts_a_rollout_within_seconds_and_the_next_start_redoes_it(
    phase: Phase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica stops answering (SIGSTOP, a partition) at ``phase`` of the rollout 1 -> 2, so the rollout
    would wait 600 s; stop must end ``run`` within seconds. The replica comes back and a new manager on the
    same registry finishes: version 2 everywhere (aborting: 2 fails to load on an entry, so 1 everywhere)."""
    caplog.set_level(logging.INFO)
    cluster = make_cluster(tmp_path, 1)
    source = FakeSource(base_dir=cluster.base_dir)
    source.versions = {1}
    # The replica that stops answering, and when.
    stuck = {
        Phase.PS_LOADING: "ps1-1:1",
        Phase.ENTRY_SWITCHING: "entry-1:1",
        Phase.PS_CLEANUP: "ps1-1:1",
        Phase.ABORTING: "entry-1:1",
    }[phase]
    if phase is Phase.PS_CLEANUP:

        def stop_ps_after_entry_switch(address: str, configs: tuple[LoadConfig, ...]) -> None:
            if address == "entry-1:1" and configs[0].versions == (2,):
                cluster.nodes[stuck].up = False

        cluster.on_reload = stop_ps_after_entry_switch
    if phase is Phase.ABORTING:
        cluster.broken_entries["entry-0:1"] = {2}

    async def scenario() -> None:
        discovery = StaticDiscovery()
        await discovery.start()
        manager, state = make_manager(cluster, discovery, source)
        await manager.step()
        assert state.serving == 1 and saved(discovery).serving == 1
        if phase is not Phase.PS_CLEANUP:
            cluster.nodes[stuck].up = False
        source.versions = {1, 2}
        await run_until_stopped_in(manager, state, phase)
        assert cluster.violations == []
        if phase is Phase.PS_LOADING:  # the audit's case: entries never touched, still on 1
            entries = [n for n in cluster.nodes.values() if n.replica.kind is ServerKind.ENTRY]
            assert all(n.configs[-1].versions == (1,) for n in entries)
            assert cluster.serving(ServerKind.ENTRY) == {1}
        node = saved(discovery)
        assert (node.phase, node.target) == (phase.value, 2)  # the next start learns it was interrupted

        # The replica is back; the process restarts.
        cluster.on_reload = lambda address, configs: None
        cluster.nodes[stuck].up = True
        restarted, state2 = make_manager(cluster, discovery, source)
        if phase is Phase.ABORTING:
            await step_until(restarted, "2 failed again, 1 serving", lambda: 2 in restarted._models[MODEL].failed)
            await step_until(restarted, "1 everywhere", lambda: on_all(cluster, 1))
            assert state2.serving == 1 and saved(discovery).failed.keys() == {2}
        else:
            await step_until(restarted, "2 everywhere", lambda: on_all(cluster, 2))
            assert state2.serving == 2
        assert (saved(discovery).phase, saved(discovery).target) == ("idle", None)
        assert cluster.violations == []

    asyncio.run(scenario())
    assert f"{MODEL} rollout to version 2 INTERRUPTED in phase {phase.value}" in caplog.text
    assert "model-manager stopping: interrupting the control step in progress" in caplog.text
    assert "the previous run stopped during a rollout to 2" in caplog.text


def test_a_rollback_interrupted_after_every_entry_switched_stays_pinned(tmp_path: Path) -> None:
    """Stopped in the PS cleanup of a rollback 2 -> 1: every entry serves 1 already, so the rollback took
    effect. The requester learns the manager stopped (503), and the next start keeps 1 instead of rolling
    forward to 2 again."""
    cluster = make_cluster(tmp_path, 2)
    source = FakeSource(base_dir=cluster.base_dir)
    source.versions = {1, 2}

    def stop_ps_after_entry_switch(address: str, configs: tuple[LoadConfig, ...]) -> None:
        if address == "entry-1:1" and configs[0].versions == (1,):
            cluster.nodes["ps0-0:1"].up = False

    async def scenario() -> None:
        discovery = StaticDiscovery()
        await discovery.start()
        manager, state = make_manager(cluster, discovery, source)
        await manager.step()
        assert state.serving == 2
        cluster.on_reload = stop_ps_after_entry_switch
        stop = asyncio.Event()
        running = asyncio.ensure_future(manager.run(stop))
        request = asyncio.ensure_future(manager.request_rollback(MODEL, 1))
        await wait_until("rollback in PS cleanup", lambda: state.phase is Phase.PS_CLEANUP)
        stop.set()
        await within(running, STOP_BOUND_S)
        with pytest.raises(UnavailableError, match="stopped before the rollback"):
            await within(request, 1.0)
        assert saved(discovery).rollback_pin is not None and saved(discovery).rollback_pin.version == 1

        cluster.on_reload = lambda address, configs: None
        cluster.nodes["ps0-0:1"].up = True
        restarted, state2 = make_manager(cluster, discovery, source)
        await step_until(restarted, "1 everywhere", lambda: on_all(cluster, 1))
        for _ in range(3):
            await restarted.step()
        assert state2.serving == 1 and on_all(cluster, 1)  # not rolled forward to 2
        assert cluster.violations == []

    asyncio.run(scenario())


def test_stop_while_idle_returns_at_once(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, 1)
    source = FakeSource(base_dir=cluster.base_dir)
    source.versions = {1}

    async def scenario() -> None:
        discovery = StaticDiscovery()
        await discovery.start()
        manager, state = make_manager(cluster, discovery, source)
        stop = asyncio.Event()
        running = asyncio.ensure_future(manager.run(stop))
        await wait_until("adopted", lambda: state.serving == 1)
        stop.set()
        await within(running, 2.0)
        assert saved(discovery).phase == "idle"

    asyncio.run(scenario())
