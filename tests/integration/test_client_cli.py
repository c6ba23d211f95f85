"""``monolith-serving client`` against real sockets: an unreachable target fails fast with UNAVAILABLE (profile as
well as predict), outputs of any dtype print, a request file's model is the one served, a load test in which
requests failed exits 1 after its summary, and Ctrl-C stops a load test cleanly. Never a traceback."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_cli import client_command, run_client
from proxy_procs import FakeEntry

pytestmark = pytest.mark.integration

EXIT_SERVER_ERROR = 1
EXIT_INTERRUPTED = 130


@pytest.fixture()
def refused_target() -> Iterator[str]:
    """host:port of a socket that is bound but never listens: connections are refused, and no other test can
    start a server there while this one runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture()
def fake_entry(tmp_path: Path) -> Iterator[FakeEntry]:
    """A real gRPC server whose Predict echoes the request's inputs and adds its name, all DT_STRING outputs."""
    with FakeEntry("a", tmp_path) as entry:
        assert isinstance(entry, FakeEntry)
        yield entry


@pytest.mark.parametrize("action", ["predict", "profile"])
def test_an_unreachable_target_fails_fast_with_unavailable(refused_target: str, action: str) -> None:
    started = time.monotonic()
    duration = ["--duration_s", "1"] if action == "profile" else []
    done = run_client(action, "--target", refused_target, "--timeout_s", "1", *duration, timeout_s=30)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == EXIT_SERVER_ERROR, done.stderr
    assert done.stderr.startswith("error: UNAVAILABLE: "), done.stderr
    if action == "profile":
        assert f"cannot reach {refused_target} within 1 s" in done.stderr
    assert time.monotonic() - started < 20


def test_string_outputs_print_as_text_and_as_json(fake_entry: FakeEntry) -> None:
    done = run_client("predict", "--target", fake_entry.address, "--batch_size", "2")
    assert done.returncode == 0, done.stderr
    assert "replica: [b'a', b'a']" in done.stdout
    done = run_client("predict", "--target", fake_entry.address, "--batch_size", "2", "--json")
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["outputs"]
    assert outputs["replica"] == ["a", "a"]
    assert len(outputs["instances"]) == 2


@pytest.fixture()
def other_model_entry(tmp_path: Path) -> Iterator[FakeEntry]:
    """A fake entry serving only the model ``other``: a Predict for ``entry`` (the default --model) is NOT_FOUND."""
    with FakeEntry("b", tmp_path, extra=["--models", "other"]) as entry:
        assert isinstance(entry, FakeEntry)
        yield entry


def test_a_request_file_is_sent_for_its_own_model(other_model_entry: FakeEntry, tmp_path: Path) -> None:
    request_file = tmp_path / "request.txt"
    request_file.write_text('model_spec { name: "other" }\n')
    target = ["--target", other_model_entry.address, "--request_file", str(request_file)]
    done = run_client("predict", *target)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("model other version 1"), done.stdout
    done = run_client("profile", *target, "--workers", "2", "--duration_s", "1", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["errors"] == 0 and summary["count"] > 0, summary


def test_a_load_test_whose_requests_fail_prints_its_summary_then_exits_1(other_model_entry: FakeEntry) -> None:
    target = ["--target", other_model_entry.address, "--workers", "2", "--duration_s", "1"]
    done = run_client("profile", *target, "--json")
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == EXIT_SERVER_ERROR, done.stderr
    summary = json.loads(done.stdout)
    assert summary["count"] == 0 and summary["errors"] > 0, summary
    assert summary["first_error"].startswith("NOT_FOUND: "), summary
    last_line = done.stderr.splitlines()[-1]
    assert last_line.startswith("error: NOT_FOUND: "), done.stderr
    assert last_line.endswith(f"({summary['errors']} of {summary['errors']} requests failed)"), done.stderr
    done = run_client("profile", *target)
    assert done.returncode == EXIT_SERVER_ERROR, done.stderr
    assert done.stdout.startswith("count 0  errors "), done.stdout
    assert "first error: NOT_FOUND: " in done.stdout


def test_a_load_test_whose_requests_all_succeed_exits_0(fake_entry: FakeEntry) -> None:
    done = run_client("profile", "--target", fake_entry.address, "--workers", "2", "--duration_s", "1", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["errors"] == 0 and summary["count"] > 0, summary
    assert "error:" not in done.stderr


def _read_stderr_until(process: subprocess.Popen[bytes], marker: bytes, timeout_s: float) -> bytes:
    """stderr up to ``marker``, read without waiting for a newline (progress lines end in ``\\r``)."""
    assert process.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout_s
    while marker not in seen:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0 or process.poll() is not None:
            raise AssertionError(f"no {marker!r} on stderr (exit {process.poll()}): {seen!r}")
        readable, _, _ = select.select([process.stderr], [], [], remaining_s)
        if readable:
            seen += os.read(process.stderr.fileno(), 4096)
    return seen


def test_ctrl_c_stops_a_load_test_without_a_traceback(fake_entry: FakeEntry) -> None:
    command = client_command("profile", "--target", fake_entry.address, "--workers", "2", "--duration_s", "600")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        before = _read_stderr_until(process, b" ok ", timeout_s=60)
        process.send_signal(signal.SIGINT)
        _, after = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = (before + after).decode(errors="replace")
    assert "Traceback" not in stderr, stderr
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "error: interrupted" in stderr
