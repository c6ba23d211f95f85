"""ChildSupervisor on real child processes (small Python scripts): readiness, restart, give-up, stop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from procs import free_port

from monolith_serving.agent.metrics import AgentMetrics
from monolith_serving.agent.supervisor import ChildSpec, ChildState, ChildSupervisor, RestartPolicy
from monolith_serving.core.errors import UnavailableError

pytestmark = pytest.mark.integration

# Listens on argv[1] after a short delay; prints its pid; ignores SIGTERM when argv[2] == "stubborn".
LISTENER = """
import os, signal, socket, sys, time
if len(sys.argv) > 2 and sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("child pid", os.getpid(), flush=True)
time.sleep(0.3)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
while True:
    conn, _ = s.accept(); conn.close()
"""

FAST = RestartPolicy(max_restarts=2, window_s=60.0, backoff_initial_s=0.05, backoff_max_s=0.2)


def value(metrics: AgentMetrics, name: str, server: str) -> float:
    sample = metrics.registry.get_sample_value(name, {"server": server})
    return 0.0 if sample is None else sample


def test_ready_restart_after_kill_then_stop(tmp_path: Path) -> None:
    port = free_port()
    metrics = AgentMetrics()
    states: list[ChildState] = []
    log_path = tmp_path / "tfs.log"

    async def main() -> None:
        sup = ChildSupervisor(policy=FAST, log_path=log_path, metrics=metrics, on_state=lambda _, s: states.append(s))
        await sup.start(ChildSpec(name="srv", argv=(sys.executable, "-c", LISTENER, str(port)), port=port))
        await sup.wait_ready("srv", 20)
        assert value(metrics, "agent_child_up", "srv") == 1
        # Present at 0 before the first restart (value() would read a missing series as 0 too).
        assert metrics.registry.get_sample_value("agent_child_restarts_total", {"server": "srv"}) == 0
        first = sup.pid("srv")
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not (sup.state("srv") is ChildState.RUNNING and sup.pid("srv") not in (None, first)):
            assert time.monotonic() < deadline, f"no restart: {states}"
            await asyncio.sleep(0.05)
        assert value(metrics, "agent_child_restarts_total", "srv") == 1
        second = sup.pid("srv")
        await sup.stop(grace_s=5)
        assert sup.state("srv") is ChildState.STOPPED
        assert second is not None
        with pytest.raises(ProcessLookupError):
            os.kill(second, 0)

    asyncio.run(main())
    assert states[:2] == [ChildState.STARTING, ChildState.RUNNING]
    assert ChildState.BACKOFF in states
    assert log_path.read_text().count("child pid") == 2  # both runs wrote to --tfs_log


def test_a_child_that_exits_once_restarts_are_held_stays_down(tmp_path: Path) -> None:
    """The agent holds restarts when it starts shutting down: a child exiting during its drain is not restarted
    only to be stopped again moments later."""
    port = free_port()
    metrics = AgentMetrics()

    async def main() -> None:
        sup = ChildSupervisor(policy=FAST, log_path=tmp_path / "tfs.log", metrics=metrics)
        await sup.start(ChildSpec(name="srv", argv=(sys.executable, "-c", LISTENER, str(port)), port=port))
        await sup.wait_ready("srv", 20)
        first = sup.pid("srv")
        assert first is not None
        sup.hold_restarts()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while sup.state("srv") is not ChildState.STOPPED:
            assert time.monotonic() < deadline, f"still {sup.state('srv')}"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # FAST's back-off is at most 0.2 s: a restart would have happened by now
        assert sup.state("srv") is ChildState.STOPPED
        assert value(metrics, "agent_child_restarts_total", "srv") == 0
        assert not sup.failed.is_set()
        await sup.stop(grace_s=2)

    asyncio.run(main())


def test_child_that_keeps_exiting_fails_with_reason(tmp_path: Path) -> None:
    async def main() -> str:
        sup = ChildSupervisor(policy=FAST, log_path=tmp_path / "log")
        argv = (sys.executable, "-c", "import sys; print('cannot load model'); sys.exit(3)")
        await sup.start(ChildSpec(name="bad", argv=argv, port=free_port()))
        with pytest.raises(UnavailableError, match="failed"):
            await sup.wait_ready("bad", 30)
        assert sup.failed.is_set() and sup.state("bad") is ChildState.FAILED
        await sup.stop()
        return sup.failure_reason

    reason = asyncio.run(main())
    assert "bad" in reason and "exit code 3" in reason and "2 restarts" in reason
    assert (tmp_path / "log").read_text().count("cannot load model") == 3


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    port = free_port()

    async def main() -> float:
        sup = ChildSupervisor(policy=FAST, log_path=tmp_path / "log")
        await sup.start(ChildSpec(name="s", argv=(sys.executable, "-c", LISTENER, str(port), "stubborn"), port=port))
        await sup.wait_ready("s", 20)
        started = time.monotonic()
        await sup.stop(grace_s=0.5)
        assert sup.state("s") is ChildState.STOPPED
        return time.monotonic() - started

    assert 0.4 < asyncio.run(main()) < 5
