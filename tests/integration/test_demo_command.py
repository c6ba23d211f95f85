"""``monolith-serving demo`` as users run it (a real process tree on loopback): plain and dense_alone exports
both answer Predict with the scores of the pure-numpy reference, and Ctrl-C (SIGINT) stops every child."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from entry_reference import assert_entry_predicts_reference
from procs import OutputLines, free_port

from monolith_serving.core.demo_export import DemoOptions, write_demo

pytestmark = pytest.mark.integration

ROWS = 200


@pytest.mark.parametrize("dense_alone", [False, True], ids=["plain", "dense_alone"])
def test_demo_serves_the_reference_scores_and_stops_its_children(tmp_path: Path, dense_alone: bool) -> None:
    export = tmp_path / "export"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS, dense_alone=dense_alone))
    port = free_port()
    cmd = [sys.executable, "-m", "monolith_serving", "demo", "--model", str(export), "--port", str(port)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = OutputLines(process).wait_for("entry serving model", timeout_s=90)
        assert ("dense server on port" in line) is dense_alone, line
        assert_entry_predicts_reference(f"127.0.0.1:{port}", export, rows=ROWS, seed=5, batch=8)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # Every child went with it: nothing listens on the entry's, the shards' or the dense server's port.
    ports = [int(p) for p in re.findall(r"\b(\d{4,5})\b", line.split(" at ", 1)[1])]
    assert ports[0] == port and len(ports) == (4 if dense_alone else 3), line  # entry, 2 shards (, dense)
    for listening in ports:
        with grpc.insecure_channel(f"127.0.0.1:{listening}") as channel, pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=1)
