"""``procs.OutputLines``, with which the client's and the demo's tests wait for ``monolith-serving demo`` to print
that it serves: a child that keeps printing after that line never blocks on a full pipe, and a child that stalls
in the middle of a line fails the wait by its deadline instead of hanging it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from procs import OutputLines

pytestmark = pytest.mark.integration

# Far more than a pipe holds (64 KiB on Linux): a child whose stdout is not drained blocks in the middle of it.
AFTER_READY_BYTES = 1 << 20
# Prints ``ready`` and a lot more, then exits 0.
CHATTY = f"import sys; print('ready', flush=True); sys.stdout.write('x' * {AFTER_READY_BYTES})"
# Prints half a line, then waits for its stdin to close.
STALLED = "import sys; sys.stdout.write('not a whole li'); sys.stdout.flush(); sys.stdin.read()"


@contextmanager
def child(code: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        assert process.stdin is not None
        process.stdin.close()
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_child_printing_after_the_line_waited_for_runs_to_its_end() -> None:
    with child(CHATTY) as process:
        assert OutputLines(process).wait_for("ready", timeout_s=30) == "ready\n"
        assert process.wait(30) == 0


def test_a_child_stalled_mid_line_fails_the_wait_by_its_deadline() -> None:
    with child(STALLED) as process:
        started = time.monotonic()
        with pytest.raises(AssertionError, match="no line with 'ready' within 0.5 s"):
            OutputLines(process).wait_for("ready", timeout_s=0.5)
        assert time.monotonic() - started < 10


def test_a_child_that_exits_first_fails_the_wait_with_its_output() -> None:
    ended = r"output ended \(exit status 3\) before a line with 'ready':\nstarting"
    with child("print('starting'); raise SystemExit(3)") as process, pytest.raises(AssertionError, match=ended):
        OutputLines(process).wait_for("ready", timeout_s=30)
