"""Child model-server processes: start, wait for the port, restart with backoff, stop gracefully.

A child that exits while the supervisor is running is restarted after an exponential backoff. More
than ``max_restarts`` exits within ``window_s`` means the child cannot run here (port taken, bad model
path, ...): the supervisor stops restarting it and sets ``failed`` with a one-line reason; the agent
then shuts down and exits non-zero so the orchestrator restarts the pod.

Children write stdout and stderr to ``log_path`` (``--tfs_log``, appended) or to the agent's stdout.
On Linux each child gets SIGTERM when the agent dies (PR_SET_PDEATHSIG), so a SIGKILLed agent leaves
no orphan servers behind. Children run in a session (and process group) of their own, so a terminal's Ctrl-C
reaches the agent alone and the agent's shutdown order holds. Use from one asyncio loop; ``stop()`` is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO

from monolith_serving.agent.metrics import AgentMetrics
from monolith_serving.core.aio_wait import within
from monolith_serving.core.errors import FailedPreconditionError, UnavailableError

__all__ = ["ChildSpec", "ChildState", "ChildSupervisor", "RestartPolicy", "tcp_probe"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ChildState(StrEnum):
    STARTING = "starting"  # spawned, port not answering yet
    RUNNING = "running"  # port answered
    BACKOFF = "backoff"  # exited; waiting before the restart
    FAILED = "failed"  # too many restarts; given up
    STOPPED = "stopped"  # stopped by the supervisor


@dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    max_restarts: int = 5  # restarts allowed within window_s; one more exit means FAILED
    window_s: float = 300.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window_s <= 0 or self.backoff_initial_s < 0:
            raise ValueError(f"bad restart policy {self}")

    def backoff_s(self, recent_restarts: int) -> float:
        """Delay before restart number ``recent_restarts`` (1-based) of the current window."""
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, recent_restarts - 1)))


@dataclass(frozen=True, kw_only=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    port: int | None = None  # TCP port that accepts connections once the child is up
    env: Mapping[str, str] | None = None  # None: inherit the agent's environment


@dataclass
class _Child:
    spec: ChildSpec
    state: ChildState = ChildState.STOPPED  # until the first spawn
    process: asyncio.subprocess.Process | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times of recent restarts
    monitor: asyncio.Task[None] | None = None


async def tcp_probe(port: int) -> bool:
    """True when ``127.0.0.1:port`` accepts a TCP connection."""
    try:
        _, writer = await within(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _die_with_parent() -> None:
    """Runs in the forked child before exec: ask the kernel for SIGTERM when the agent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class ChildSupervisor:
    """Supervises named children. Not thread-safe (one loop)."""

    def __init__(
        self,
        *,
        policy: RestartPolicy,
        log_path: Path | None = None,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[str, ChildState], None] | None = None,
        probe: Callable[[int], Awaitable[bool]] = tcp_probe,
    ) -> None:
        self._policy = policy
        self._log_path = log_path
        self._metrics = metrics or AgentMetrics()
        self._clock = clock
        self._on_state = on_state
        self._probe = probe
        self._children: dict[str, _Child] = {}
        self._log_file: IO[bytes] | None = None
        self._stopping = False
        self._restarts_held = False
        self.failed = asyncio.Event()
        self.failure_reason = ""

    # ---- queries ---------------------------------------------------------------------------------------
    def state(self, name: str) -> ChildState:
        return self._children[name].state

    def pid(self, name: str) -> int | None:
        process = self._children[name].process
        return process.pid if process is not None and process.returncode is None else None

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self, spec: ChildSpec) -> None:
        """Spawn ``spec`` and keep it running; returns once the process exists (not when it is ready)."""
        if self._stopping:
            raise FailedPreconditionError("supervisor is stopping")
        if spec.name in self._children:
            raise FailedPreconditionError(f"child {spec.name!r} already started")
        child = _Child(spec)
        self._children[spec.name] = child
        # The series exists from the start at 0: an alert on increase() cannot see a counter born at its first 1.
        self._metrics.child_restarts.labels(spec.name)
        await self._spawn(child)
        child.monitor = asyncio.create_task(self._monitor(child), name=f"supervise-{spec.name}")

    async def wait_ready(self, name: str, timeout_s: float) -> None:
        """Wait until the readiness probe of the child's port succeeded while its process ran.

        Raises UnavailableError on timeout or when the child has FAILED.
        """
        child = self._children[name]
        deadline = self._clock() + timeout_s
        while True:
            if child.state is ChildState.FAILED:
                raise UnavailableError(f"child {name} failed: {self.failure_reason}")
            if child.state is ChildState.RUNNING:
                return
            if self._clock() > deadline:
                raise UnavailableError(f"child {name}: port {child.spec.port} not answering after {timeout_s:g} s")
            await asyncio.sleep(0.1)

    def hold_restarts(self) -> None:
        """From now on a child that exits stays down (STOPPED): the agent is shutting down. Its nodes are gone
        and it drains before ``stop``; a child restarted then would only be stopped again moments later."""
        self._restarts_held = True

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every child (last started first), SIGKILL after ``grace_s``; no more restarts."""
        if self._stopping:
            return
        self._stopping = True
        for child in reversed(list(self._children.values())):
            if child.monitor is not None:
                child.monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await child.monitor
        await asyncio.gather(*(self._terminate(c, grace_s) for c in reversed(list(self._children.values()))))
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # ---- internals -------------------------------------------------------------------------------------
    def _set_state(self, child: _Child, state: ChildState) -> None:
        if child.state is state:
            return
        child.state = state
        self._metrics.child_up.labels(child.spec.name).set(1 if state is ChildState.RUNNING else 0)
        if self._on_state is not None:
            self._on_state(child.spec.name, state)

    def _output(self) -> IO[bytes] | int:
        if self._log_path is None:
            return sys.stdout.fileno()
        if self._log_file is None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self._log_path, "ab")  # noqa: SIM115 - kept open for every child's lifetime
        return self._log_file

    async def _spawn(self, child: _Child) -> None:
        self._set_state(child, ChildState.STARTING)
        env = dict(child.spec.env) if child.spec.env is not None else None
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        try:
            child.process = await asyncio.create_subprocess_exec(
                *child.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._output(),
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=preexec,
                # Out of the agent's process group: a Ctrl-C to a foreground agent must reach the agent alone,
                # which deregisters and drains before it stops its children.
                start_new_session=True,
            )
        except OSError as exc:
            # Nothing to run (bad executable, fd limits): counted like an exit by the monitor.
            log.error("child %s could not be spawned: %s", child.spec.name, exc)
            child.process = None
            return
        log.info("child %s started (pid %d): %s", child.spec.name, child.process.pid, " ".join(child.spec.argv))

    async def _monitor(self, child: _Child) -> None:
        name = child.spec.name
        while True:
            process = child.process
            if process is not None:
                probe = asyncio.create_task(self._probe_port(child, process))
                code = await process.wait()
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
                if self._restarts_held:
                    log.warning("child %s (pid %d) exited with code %s while the agent stops; not restarted",
                                name, process.pid, code)  # fmt: skip
                    self._set_state(child, ChildState.STOPPED)
                    return
                log.error("child %s (pid %d) exited with code %s", name, process.pid, code)
                reason = f"exit code {code}"
            else:
                reason = "could not be spawned"
            now = self._clock()
            child.restarts = [t for t in child.restarts if now - t < self._policy.window_s]
            if len(child.restarts) >= self._policy.max_restarts:
                self.failure_reason = (
                    f"child {name} {reason}; {len(child.restarts)} restarts within {self._policy.window_s:g} s, "
                    f"giving up (see {self._log_path or 'the output above'})"
                )
                log.error("%s", self.failure_reason)
                self._set_state(child, ChildState.FAILED)
                self.failed.set()
                return
            child.restarts.append(now)
            delay_s = self._policy.backoff_s(len(child.restarts))
            self._set_state(child, ChildState.BACKOFF)
            log.warning("restarting child %s in %.1f s (restart %d)", name, delay_s, len(child.restarts))
            await asyncio.sleep(delay_s)
            self._metrics.child_restarts.labels(name).inc()
            await self._spawn(child)

    async def _probe_port(self, child: _Child, process: asyncio.subprocess.Process) -> None:
        """Mark the child RUNNING once ``probe(port)`` succeeds while it runs (at once if it has no port)."""
        port = child.spec.port
        while process.returncode is None:
            if port is None or await self._probe(port):
                if process.returncode is None:
                    self._set_state(child, ChildState.RUNNING)
                return
            await asyncio.sleep(0.1)

    async def _terminate(self, child: _Child, grace_s: float) -> None:
        process = child.process
        if process is not None and process.returncode is None:
            log.info("stopping child %s (pid %d)", child.spec.name, process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await within(process.wait(), grace_s)
            except TimeoutError:
                log.warning("child %s ignored SIGTERM for %.1f s: killing it", child.spec.name, grace_s)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if child.state is not ChildState.FAILED:
            self._set_state(child, ChildState.STOPPED)
