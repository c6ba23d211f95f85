"""SIGTERM while a server's first model load is stuck (a stalled file system): the process exits 0 at once
instead of when the load ends, which Kubernetes would cut short with SIGKILL at the end of the grace period."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from procs import ServerProcess, free_port

from monolith_serving.core.demo_export import DemoOptions, write_demo

pytestmark = pytest.mark.integration

LOAD_START_TIMEOUT_S = 60.0


def blocked_dense_export(folder: Path) -> Path:
    """A dense_alone export whose version 1 cannot be read: its dense_spec.json is a FIFO nobody writes, so the
    load thread blocks in open() for good, as on a hung network file system. Returns the dense_0 folder."""
    write_demo(DemoOptions(out=folder, num_ps=1, rows=10, dense_alone=True))
    spec = folder / "dense_0" / "1" / "dense_spec.json"
    spec.unlink()
    os.mkfifo(spec)
    return spec.parent.parent


def wait_for_log_line(server: ServerProcess, text: str) -> None:
    assert server.process is not None
    deadline = time.monotonic() + LOAD_START_TIMEOUT_S
    while text not in server.log_tail(1000):
        assert server.process.poll() is None, f"exited with {server.process.returncode}:\n{server.log_tail()}"
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{server.log_tail()}"
        time.sleep(0.1)


def test_dense_server_exits_on_sigterm_during_a_blocked_first_load(tmp_path: Path) -> None:
    base_path = blocked_dense_export(tmp_path / "export")
    port = free_port()
    args = ["--port", str(port), "--host", "127.0.0.1", "--model_name", "dense_0", "--model_base_path", str(base_path)]
    server = ServerProcess("dense", args, port=port, log_path=tmp_path / "dense.log").launch()
    try:
        wait_for_log_line(server, "dense_0 version 1: loading")
        # stop(): SIGTERM, then SIGKILL and a test failure (the conftest's STOP_PROBLEMS) unless it exits 0 in time.
        assert server.stop() == 0
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert "dense server stopping before it finished starting" in server.log_tail()


def test_entry_exits_on_sigterm_during_a_blocked_first_load(tmp_path: Path) -> None:
    write_demo(DemoOptions(out=tmp_path / "export", num_ps=2, rows=10))
    spec = tmp_path / "export" / "entry" / "1" / "serving_spec.json"
    spec.unlink()
    os.mkfifo(spec)  # the load thread blocks in open() for good, as on a hung network file system
    port = free_port()
    args = ["--port", str(port), "--model_base_path", str(tmp_path / "export" / "entry"),
            "--ps_targets", f"127.0.0.1:{free_port()}", "--ps_targets", f"127.0.0.1:{free_port()}"]  # fmt: skip
    server = ServerProcess("entry", args, port=port, log_path=tmp_path / "entry.log").launch()
    try:
        wait_for_log_line(server, "loading entry version 1")
        assert server.stop() == 0
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    assert "entry stopping before it finished starting" in server.log_tail()
