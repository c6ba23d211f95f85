"""Two models sharing a unified container: a reload there replaces the container's whole model set, so rolling
out one model must carry the other's sub-models along (as the config last sent to them, or what they hold).

A small in-memory fake of our ReplicaControl: models ``a`` and ``b`` (agent v3 names ``a:ps_0``, ``a:entry`` …), one
PS shard each, both shards in container ``u:1``, each entry alone. A reload replaces the whole set at its address,
and the fake records every sub-model a reload left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from model_manager_fakes import FakeClock

from monolith_serving.core.errors import NotFoundError
from monolith_serving.model_manager.control import (
    LoadConfig,
    Replica,
    ReplicaControl,
    ServerKind,
    VersionState,
    VersionStatus,
)
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.rollout import ModelState, ModelTarget, Outcome, RolloutConfig, RolloutCoordinator

SHARED = "u:1"
AVAILABLE = VersionState.AVAILABLE


class TwoModels(ReplicaControl):
    def __init__(self) -> None:
        # (address, served name) -> version -> status; every sub-model starts serving version 1.
        self.held: dict[tuple[str, str], dict[int, VersionStatus]] = {}
        for model in ("a", "b"):
            self.held[(SHARED, f"{model}:ps_0")] = {1: VersionStatus(1, AVAILABLE)}
            self.held[(f"e{model}:1", f"{model}:entry")] = {1: VersionStatus(1, AVAILABLE)}
        self.requests: list[tuple[str, tuple[str, ...]]] = []  # address, served names of each reload
        self.unloaded: list[str] = []

    def replicas(self, model: str) -> list[Replica]:
        return [Replica(ServerKind.PS, 0, SHARED), Replica(ServerKind.ENTRY, 0, f"e{model}:1")]

    async def status(self, replica: Replica, served_name: str, timeout_s: float) -> list[VersionStatus]:
        held = self.held.get((replica.address, served_name))
        if held is None:
            raise NotFoundError(f"model {served_name!r} is not served at {replica.address}")
        return list(held.values())

    async def reload(self, address: str, configs: Sequence[LoadConfig], timeout_s: float) -> None:
        self.requests.append((address, tuple(c.served_name for c in configs)))
        wanted = {c.served_name: c for c in configs if not c.drop}
        for key in [k for k in self.held if k[0] == address]:
            config = wanted.get(key[1])
            if config is None:
                self.unloaded.append(f"{key[1]}@{address}")
                del self.held[key]
                continue
            model = key[1].split(":")[0]
            if key[1].endswith(":entry"):
                ps = self.held.get((SHARED, f"{model}:ps_0"), {})
                ready = [v for v in config.versions if v in ps and ps[v].state is AVAILABLE]
                if ready:
                    self.held[key] = {v: VersionStatus(v, AVAILABLE) for v in ready}
            else:
                self.held[key] = {v: VersionStatus(v, AVAILABLE) for v in config.versions}


def coordinator(control: TwoModels) -> RolloutCoordinator:
    clock = FakeClock()
    return RolloutCoordinator(
        control=control,
        config=RolloutConfig(timeout_s=30.0, poll_interval_s=1.0, drain_s=1.0, resend_interval_s=5.0),
        metrics=ModelManagerMetrics(),
        clock=clock,
        wall=clock,
        sleep=clock.sleep,
    )


def state(model: str) -> ModelState:
    return ModelState(ModelTarget(model, f"/receive/{model}", 1, served_prefix=f"{model}:"))


def test_rolling_out_one_model_keeps_the_other_models_shard_in_the_shared_container() -> None:
    async def scenario() -> None:
        control = TwoModels()
        manager = coordinator(control)
        a, b = state("a"), state("b")
        manager.track(b)  # what ModelManager does for every model it manages, before any rollout
        for model_state in (a, b):
            await manager.observe(model_state)
            await manager.adopt(model_state)
        record = await manager.rollout(a, 2)
        assert record.outcome is Outcome.SUCCEEDED, record.reason
        assert control.unloaded == []
        assert control.held[(SHARED, "b:ps_0")] == {1: VersionStatus(1, AVAILABLE)}  # untouched
        assert control.held[(SHARED, "a:ps_0")] == {2: VersionStatus(2, AVAILABLE)}
        shared = [names for address, names in control.requests if address == SHARED]
        assert shared and all(set(names) == {"a:ps_0", "b:ps_0"} for names in shared)
        # Then b moves on: a's shard keeps the config it was last sent.
        record = await manager.rollout(b, 3)
        assert record.outcome is Outcome.SUCCEEDED, record.reason
        assert control.unloaded == []
        assert control.held[(SHARED, "a:ps_0")] == {2: VersionStatus(2, AVAILABLE)}
        assert control.held[(SHARED, "b:ps_0")] == {3: VersionStatus(3, AVAILABLE)}
        assert control.held[("eb:1", "b:entry")] == {3: VersionStatus(3, AVAILABLE)}

    asyncio.run(scenario())


def test_a_model_the_coordinator_was_never_handed_is_not_seen() -> None:
    # The documented limit: a reload names what this coordinator manages; a model it does not know is dropped.
    async def scenario() -> None:
        control = TwoModels()
        manager = coordinator(control)
        a = state("a")
        await manager.observe(a)
        await manager.adopt(a)
        record = await manager.rollout(a, 2)
        assert record.outcome is Outcome.SUCCEEDED, record.reason
        assert control.unloaded == [f"b:ps_0@{SHARED}"]

    asyncio.run(scenario())
