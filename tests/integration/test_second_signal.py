"""A second SIGTERM/SIGINT while a command is stopping ends the process at once (``core.grpc_server.run_async_main``):
a stop can wait on a drain timeout or on a load that will not end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

# A main that takes its stop signal and then never finishes stopping, as a drain waiting on hung calls does.
STUCK_STOP = """
import asyncio, logging, sys
from monolith_serving.core.grpc_server import run_async_main

logging.basicConfig(level=logging.INFO, stream=sys.stderr)

async def main(stop: asyncio.Event) -> int:
    print("serving", flush=True)
    await stop.wait()
    print("stopping", flush=True)
    await asyncio.sleep(3600)
    return 0

sys.exit(run_async_main(main))
"""


def _wait_for_line(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdout is not None
    assert process.stdout.readline().strip() == line


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_second_signal_while_stopping_exits_at_once(second: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", STUCK_STOP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_line(process, "serving")
        process.send_signal(signal.SIGTERM)
        _wait_for_line(process, "stopping")
        time.sleep(0.2)
        assert process.poll() is None, "the first signal only asks to stop"
        process.send_signal(second)
        code = process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert code == 128 + second.value, process.stderr.read()
    assert f"{second.name} again while stopping: exiting now" in process.stderr.read()
