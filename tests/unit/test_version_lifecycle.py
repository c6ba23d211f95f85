"""core.version_lifecycle on its own: the hooks it calls, the order of states, how a failed load is reported."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from monolith_serving.core.errors import FailedPreconditionError, NotFoundError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.model_state import ModelState
from monolith_serving.core.version_lifecycle import LifecycleHooks, VersionLifecycle


@dataclass(frozen=True)
class Config:
    name: str
    base_path: Path
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    version_labels: Mapping[str, int] = field(default_factory=dict)


@dataclass
class Recorder:
    """Every hook call, in order; ``broken`` versions fail to load with a plain ValueError; a version with a
    gate loads only once its gate is set."""

    broken: set[int] = field(default_factory=set)
    gates: dict[int, threading.Event] = field(default_factory=dict)
    calls: list[tuple[object, ...]] = field(default_factory=list)

    def load(self, config: Config, version: int) -> str:
        gate = self.gates.get(version)
        if gate is not None and not gate.wait(30):
            raise TimeoutError(f"version {version}: the test never opened its gate")
        if version in self.broken:
            raise ValueError(f"cannot read version {version}")
        return f"{config.name}@{version}"

    def publish(self, loaded: str, pending: list[int], model: str) -> None:
        self.calls.append(("publish", loaded, list(pending)))
        if -1 in pending:
            raise NotFoundError("replayed update names a table the version lacks")

    def hooks(self) -> LifecycleHooks[Config, str, int]:
        return LifecycleHooks(
            load=self.load,
            published=lambda model, version, loaded, elapsed: f"holds {loaded}",
            unloaded=lambda model, version, loaded: self.calls.append(("unloaded", version, loaded)),
            removed=lambda model: self.calls.append(("removed", model)),
            publish=self.publish,
        )

    # VersionMetrics: the state gauge and the failure counter, recorded as calls.
    @property
    def version_state(self) -> Recorder:
        return self

    @property
    def load_failures(self) -> Recorder:
        return self

    def labels(self, model: str, version: str | None = None) -> _Child:
        return _Child(self.calls, model, version)

    def remove(self, model: str, version: str | None = None) -> None:
        self.calls.append(("forgot", int(version)) if version is not None else ("forgot failures", model))


@dataclass
class _Child:
    calls: list[tuple[object, ...]]
    model: str
    version: str | None

    def set(self, state: int) -> None:
        assert self.version is not None
        self.calls.append(("state", int(self.version), ModelState(state)))

    def inc(self) -> None:
        self.calls.append(("failed", self.model))


def _lifecycle(recorder: Recorder, ended_kept: int = 10) -> VersionLifecycle[Config, str, int]:
    return VersionLifecycle(
        hooks=recorder.hooks(), metrics=recorder, executor=ThreadPoolExecutor(1), ended_kept=ended_kept
    )


def _versions(root: Path, *versions: int) -> Config:
    for v in versions:
        (root / "m" / str(v)).mkdir(parents=True, exist_ok=True)
    return Config("m", root / "m")


def test_states_in_order_and_the_old_version_unloaded_with_what_it_held(tmp_path: Path) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        lifecycle = _lifecycle(recorder)
        config = _versions(tmp_path, 1)
        await lifecycle.apply_config([config])
        assert lifecycle.resolve("m")[1].require_loaded() == "m@1"
        _versions(tmp_path, 2)
        recorder.calls.clear()
        await lifecycle.refresh()
        states = [(c[1], c[2]) for c in recorder.calls if c[0] == "state"]
        assert states == [
            (2, ModelState.START), (2, ModelState.LOADING), (2, ModelState.AVAILABLE),
            (1, ModelState.UNLOADING), (1, ModelState.END),
        ]  # fmt: skip
        assert ("unloaded", 1, "m@1") in recorder.calls
        assert [(s.version, s.state) for s in lifecycle.status("m")] == [(2, ModelState.AVAILABLE), (1, ModelState.END)]
        with pytest.raises(NotFoundError, match="version 1 is not loaded"):
            lifecycle.model("m").versions[1].require_loaded()

    asyncio.run(scenario())


def test_a_foreign_exception_is_reported_as_failed_precondition_and_retried_only_when_fresh(tmp_path: Path) -> None:
    async def scenario() -> None:
        recorder = Recorder(broken={2})
        lifecycle = _lifecycle(recorder)
        await lifecycle.apply_config([_versions(tmp_path, 1)])
        _versions(tmp_path, 2)
        await lifecycle.refresh()
        broken, serving = lifecycle.status("m")
        assert (broken.version, broken.state, serving.state) == (2, ModelState.END, ModelState.AVAILABLE)
        assert isinstance(broken.error, FailedPreconditionError)
        assert broken.error.message == "ValueError: cannot read version 2"
        assert ("failed", "m") in recorder.calls
        await lifecycle.refresh()  # a poll does not retry a failed version
        assert lifecycle.status("m", 2)[0].state is ModelState.END
        recorder.broken.clear()
        await lifecycle.apply_config([lifecycle.model("m").config], fresh=True)
        assert [(s.version, s.state) for s in lifecycle.status("m")] == [(2, ModelState.AVAILABLE), (1, ModelState.END)]

    asyncio.run(scenario())


def test_pending_work_is_published_once_and_a_failing_publish_fails_the_load(tmp_path: Path) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        lifecycle = _lifecycle(recorder)
        config = _versions(tmp_path, 1)
        loading = asyncio.create_task(lifecycle.apply_config([config]))
        while not lifecycle.models.get("m") or not lifecycle.model("m").loading():
            await asyncio.sleep(0)
        lifecycle.model("m").loading()[0].pending.extend([7, 8])
        await loading
        assert ("publish", "m@1", [7, 8]) in recorder.calls
        assert lifecycle.model("m").versions[1].pending == []

        _versions(tmp_path, 2)
        refreshing = asyncio.create_task(lifecycle.refresh())
        while not lifecycle.model("m").loading():
            await asyncio.sleep(0)
        lifecycle.model("m").loading()[0].pending.append(-1)
        await refreshing
        failed = lifecycle.status("m", 2)[0]
        assert failed.state is ModelState.END and isinstance(failed.error, NotFoundError)
        assert lifecycle.resolve("m")[1].version == 1  # the old version keeps serving

    asyncio.run(scenario())


def test_serve_nothing_unloads_everything(tmp_path: Path) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        lifecycle = _lifecycle(recorder)
        config = _versions(tmp_path, 1)
        await lifecycle.apply_config([config])
        nothing = Config("m", config.base_path, VersionPolicy(PolicyKind.SPECIFIC, versions=()))
        await lifecycle.apply_config([nothing])
        assert [(s.version, s.state) for s in lifecycle.status("m")] == [(1, ModelState.END)]
        await lifecycle.apply_config([])
        with pytest.raises(NotFoundError, match="not served here"):
            lifecycle.model("m")
        assert ("forgot", 1) in recorder.calls  # a removed model leaves no state series behind
        assert recorder.calls[-2:] == [("forgot failures", "m"), ("removed", "m")]  # nor any other series

    asyncio.run(scenario())


def test_only_the_newest_ended_versions_are_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        lifecycle = _lifecycle(recorder, ended_kept=2)
        config = _versions(tmp_path, 1)
        await lifecycle.apply_config([config])
        for version in range(2, 7):  # a new version every "hour": 1..5 end in turn
            _versions(tmp_path, version)
            await lifecycle.refresh()
        assert [(s.version, s.state) for s in lifecycle.status("m")] == [
            (6, ModelState.AVAILABLE), (5, ModelState.END), (4, ModelState.END),
        ]  # fmt: skip
        assert [c[1] for c in recorder.calls if c[0] == "forgot"] == [1, 2, 3]

    asyncio.run(scenario())


def test_a_failed_version_still_wanted_is_never_forgotten_and_never_reloaded(tmp_path: Path) -> None:
    async def scenario() -> None:
        recorder = Recorder(broken={9})
        lifecycle = _lifecycle(recorder, ended_kept=0)
        await lifecycle.apply_config([_versions(tmp_path, 8)])
        _versions(tmp_path, 9)
        for _ in range(3):
            await lifecycle.refresh()
        assert [(s.version, s.state) for s in lifecycle.status("m")] == [(9, ModelState.END), (8, ModelState.AVAILABLE)]
        assert recorder.calls.count(("failed", "m")) == 1  # polls neither forget nor retry it
        assert ("forgot", 9) not in recorder.calls

    asyncio.run(scenario())


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


def test_a_reload_whose_caller_is_cancelled_still_ends_its_load(tmp_path: Path) -> None:
    """gRPC cancels HandleReloadConfigRequest when its client's deadline passes, possibly mid-load. The version
    must still end AVAILABLE (or END), never stay LOADING: polls skip a known version, and sync batches would
    queue on it without end."""

    async def scenario() -> None:
        recorder = Recorder(gates={2: threading.Event()})
        lifecycle = _lifecycle(recorder)
        config = _versions(tmp_path, 1)
        await lifecycle.apply_config([config])
        _versions(tmp_path, 2)
        reload = asyncio.create_task(lifecycle.apply_config([config], fresh=True))
        await _until(lambda: 2 in lifecycle.model("m").versions)
        reload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reload
        assert lifecycle.status("m", 2)[0].state is ModelState.LOADING
        recorder.gates[2].set()
        await _until(lambda: lifecycle.status("m", 2)[0].state is not ModelState.LOADING)
        await lifecycle.refresh()
        assert [(s.version, s.state) for s in lifecycle.status("m")] == [(2, ModelState.AVAILABLE), (1, ModelState.END)]
        assert lifecycle.resolve("m")[1].require_loaded() == "m@2"

    asyncio.run(scenario())


def test_close_ends_a_load_in_flight(tmp_path: Path) -> None:
    async def scenario() -> None:
        recorder = Recorder(gates={1: threading.Event()})
        lifecycle = _lifecycle(recorder)
        start = asyncio.create_task(lifecycle.apply_config([_versions(tmp_path, 1)]))
        await _until(lambda: "m" in lifecycle.models and 1 in lifecycle.model("m").versions)
        await lifecycle.close()
        assert start.done()
        loading = lifecycle.status("m", 1)[0]
        assert loading.state is ModelState.END
        assert loading.error is not None and "shutting down" in loading.error.message
        recorder.gates[1].set()  # lets the executor's thread finish

    asyncio.run(scenario())


def test_a_poll_does_not_load_a_model_removed_while_it_waited(tmp_path: Path) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        lifecycle = _lifecycle(recorder)
        a = _versions(tmp_path, 1)
        b = Config("b", tmp_path / "b")
        (tmp_path / "b" / "1").mkdir(parents=True)
        await lifecycle.apply_config([a, b])
        (tmp_path / "m" / "2").mkdir()
        (tmp_path / "b" / "2").mkdir()
        recorder.gates[2] = threading.Event()
        poll = asyncio.create_task(lifecycle.refresh())  # walks m, then b
        await _until(lambda: 2 in lifecycle.model("m").versions)
        remove_b = asyncio.create_task(lifecycle.apply_config([a]))  # waits for m's lock
        await asyncio.sleep(0.05)
        recorder.gates[2].set()
        await asyncio.gather(poll, remove_b)
        assert sorted(lifecycle.models) == ["m"]
        loaded = [c[1] for c in recorder.calls if c[0] == "publish"]
        assert "b@2" not in loaded, loaded

    asyncio.run(scenario())


def test_a_model_added_again_while_its_removal_waited_keeps_its_series(tmp_path: Path) -> None:
    """Series are keyed by name and version: a removal that waited for the model's lock (a poll held it) must
    not forget the series of a model of the same name that a later config change added again. Config changes
    therefore run one at a time: the re-add starts only once the removal has ended."""

    async def scenario() -> None:
        recorder = Recorder()
        load_here = recorder.load  # gated by version; the re-added model's version 2 is not
        hooks = dataclasses.replace(recorder.hooks(), load=lambda c, v: load_here(c, v) if c is config else f"m@{v}")
        lifecycle = VersionLifecycle(hooks=hooks, metrics=recorder, executor=ThreadPoolExecutor(2))
        config = _versions(tmp_path, 1)
        await lifecycle.apply_config([config])
        _versions(tmp_path, 2)
        recorder.gates[2] = threading.Event()
        poll = asyncio.create_task(lifecycle.refresh())  # holds m's lock while version 2 loads
        await _until(lambda: 2 in lifecycle.model("m").versions)
        remove = asyncio.create_task(lifecycle.apply_config([]))  # waits for the lock
        await _until(lambda: "m" not in lifecycle.models)
        elsewhere = Config("m", tmp_path / "elsewhere")
        (elsewhere.base_path / "2").mkdir(parents=True)
        add_again = asyncio.create_task(lifecycle.apply_config([elsewhere]))
        await asyncio.wait({add_again}, timeout=0.5)  # interleaved, it would load version 2 here at once
        recorder.gates[2].set()
        await asyncio.gather(poll, remove, add_again)
        assert lifecycle.resolve("m")[1].require_loaded() == "m@2"
        live: dict[int, ModelState] = {}
        for call in recorder.calls:
            if call[0] == "state":
                live[call[1]] = call[2]  # type: ignore[index]
            elif call[0] == "forgot":
                live.pop(call[1], None)  # type: ignore[arg-type]
        assert live == {2: ModelState.AVAILABLE}, recorder.calls
        available = [i for i, call in enumerate(recorder.calls) if call == ("state", 2, ModelState.AVAILABLE)]
        assert recorder.calls.index(("removed", "m")) < available[-1]

    asyncio.run(scenario())


def test_a_missing_base_path_is_logged_once_per_absence_not_every_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        lifecycle = _lifecycle(Recorder())
        missing = Config("m", tmp_path / "later")
        with caplog.at_level("INFO", logger="monolith_serving.core.version_lifecycle"):
            await lifecycle.apply_config([missing])
            for _ in range(5):
                await lifecycle.refresh()
            (tmp_path / "later" / "1").mkdir(parents=True)
            await lifecycle.refresh()
            await lifecycle.refresh()
        lines = [r.getMessage() for r in caplog.records if "later" in r.getMessage()]
        assert len([line for line in lines if "does not exist" in line]) == 1, lines
        assert len([line for line in lines if "there again" in line]) == 1, lines

    asyncio.run(scenario())


@pytest.mark.parametrize("kept", [(1,), (1, 3)])
def test_a_reload_racing_a_poll_never_unloads_a_version_it_keeps(tmp_path: Path, kept: tuple[int, ...]) -> None:
    """A poll under ``latest`` loads version 3 while a reload to ``specific {1}`` (a rollback) or ``{1, 3}`` (a
    PS-first rollout step) arrives: version 1 must serve throughout. The poll chose ``{3}`` by the old policy;
    unloading by that choice took version 1 out of service until the reload loaded it again."""

    async def scenario() -> None:
        recorder = Recorder()
        lifecycle = _lifecycle(recorder)
        latest = _versions(tmp_path, 1)
        await lifecycle.apply_config([latest])
        recorder.gates[3] = threading.Event()
        _versions(tmp_path, 3)
        poll = asyncio.create_task(lifecycle.refresh())
        await _until(lambda: 3 in lifecycle.model("m").versions)  # the poll loads version 3, holding the lock
        pinned = Config("m", latest.base_path, VersionPolicy(PolicyKind.SPECIFIC, versions=kept))
        reload = asyncio.create_task(lifecycle.apply_config([pinned]))
        await _until(lambda: lifecycle.model("m").config is pinned)  # the reload now waits for the lock
        recorder.gates[3].set()
        await asyncio.gather(poll, reload)
        assert not [c for c in recorder.calls if c[0] == "unloaded" and c[1] == 1], recorder.calls
        states = {s.version: s.state for s in lifecycle.status("m")}
        assert states[1] is ModelState.AVAILABLE
        assert states[3] is (ModelState.AVAILABLE if 3 in kept else ModelState.END)

    asyncio.run(scenario())
