"""Starting real ``monolith-serving`` processes on loopback for integration tests.

``ServerProcess`` runs ``python -m monolith_serving <command> ...`` with its log captured to a file, waits until
the gRPC health check says SERVING (failing fast, with the log tail, if the process exits first), and stops the
process with SIGTERM at teardown; a server that then needs SIGKILL, or exits non-zero, fails the test. Reused by
the PS, entry and agent tests. ``OutputLines`` waits for a line of a child's stdout while draining it, for
commands that report readiness by printing (``demo``).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from ports import free_port as free_port  # re-exported: the integration tests take it from here

from monolith_serving.client.health import check_health, wait_until_serving
from monolith_serving.core.tls_channel import ChannelTls

# Filled by ``ServerProcess.stop``; the integration conftest fails any test that leaves something here. A server
# that hangs on SIGTERM (its shutdown awaiting a task that never ends) is a bug that operators meet as pods killed
# at the end of their grace period, and tests that merely stop it would never notice.
STOP_PROBLEMS: list[str] = []


class ServerProcess:
    """One ``monolith-serving`` subcommand as a child process.

    ``port`` is the gRPC port the caller put in ``args``; ``address`` is ``127.0.0.1:<port>``.
    """

    def __init__(
        self,
        command: str,
        args: Sequence[str],
        *,
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 60.0,
        tls: ChannelTls | None = None,
    ) -> None:
        self.command = command
        self.args = list(args)
        self.port = port
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout_s = ready_timeout_s
        self.tls = tls  # readiness is checked over TLS with these credentials (a server with --ssl_config_file)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> ServerProcess:
        """Launches the process and waits until it is SERVING."""
        self.launch()
        self.wait_serving()
        return self

    def launch(self) -> ServerProcess:
        """Launches the process without waiting for anything (a test of its start-up itself)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "monolith_serving", self.command, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self

    def wait_serving(self) -> None:
        def alive() -> bool:
            return self.process is None or self.process.poll() is None

        try:
            wait_until_serving(self.address, timeout_s=self.ready_timeout_s, still_alive=alive, tls=self.tls)
        except RuntimeError:
            assert self.process is not None
            raise RuntimeError(
                f"{self.command} exited with {self.process.returncode} before serving:\n{self.log_tail()}"
            ) from None
        except TimeoutError as error:
            raise TimeoutError(f"{self.command}: {error}\n{self.log_tail()}") from None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self._stop_problem(f"did not exit within {timeout_s:g} s of SIGTERM and was killed")
            return self.process.wait()
        if code != 0:
            self._stop_problem(f"exited with {code} on SIGTERM")
        return code

    def _stop_problem(self, what: str) -> None:
        STOP_PROBLEMS.append(f"{self.command} on port {self.port} {what}; log tail:\n{self.log_tail()}")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# A model server's health services: the whole server and each service it hosts by name.
MODEL_SERVER_HEALTH_SERVICES = ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


def model_server_health(proc: ServerProcess) -> set[str]:
    """The statuses a model server's health services report now ({"SERVING"} when all of them serve)."""
    return {
        check_health(proc.address, service=service, timeout_s=5.0).status for service in MODEL_SERVER_HEALTH_SERVICES
    }


def wait_model_server_health(proc: ServerProcess, status: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := model_server_health(proc)) != {status}:
        assert time.monotonic() < deadline, f"health {seen}, not {status}\n{proc.log_tail()}"
        time.sleep(0.1)


class OutputLines:
    """A child's text stdout (``stdout=PIPE, text=True``), drained line by line on a daemon thread.

    The child never blocks on a full pipe (64 KiB) however much it prints after the line a test waited for, and
    ``wait_for`` keeps its deadline when the child stalls in the middle of a line, where ``readline()`` would block.
    """

    def __init__(self, process: subprocess.Popen[str], tail_lines: int = 40) -> None:
        assert process.stdout is not None, "start the process with stdout=subprocess.PIPE, text=True"
        self._process = process
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # None: the output ended
        self._seen: list[str] = []
        self._tail_lines = tail_lines
        threading.Thread(target=self._drain, args=(process.stdout,), daemon=True).start()

    def _drain(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._lines.put(line)
        self._lines.put(None)

    def _exit_status(self) -> int | None:
        """The process's exit status once its output has ended; None if it lives on without it."""
        try:
            return self._process.wait(5.0)
        except subprocess.TimeoutExpired:
            return None

    def tail(self) -> str:
        return "".join(self._seen[-self._tail_lines :])

    def wait_for(self, text: str, timeout_s: float) -> str:
        """The next line holding ``text``; AssertionError, with the output's tail, when the output ends (the process
        exited) or ``timeout_s`` passes first."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} within {timeout_s:g} s; output:\n{self.tail()}") from None
            if line is None:
                self._lines.put(None)  # still ended for the next wait
                raise AssertionError(
                    f"output ended (exit status {self._exit_status()}) before a line with {text!r}:\n{self.tail()}"
                )
            self._seen.append(line)
            if text in line:
                return line
