"""``monolith-serving demo --rest_api_port P``: the entry it starts serves TF Serving's REST API there, and the line
it prints names that address."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from procs import OutputLines, free_port
from rest_calls import rest_json

pytestmark = pytest.mark.integration


def test_demo_prints_and_serves_the_entrys_rest_api(tmp_path: Path) -> None:
    port, rest_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "monolith_serving", "demo", "--port", str(port), "--rest_api_port", str(rest_port)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = OutputLines(process).wait_for("entry serving model", timeout_s=90)
        assert f"at 127.0.0.1:{port}, REST API at http://127.0.0.1:{rest_port}/v1/models/entry " in line, line
        status, answer = rest_json(rest_port, "GET", "/v1/models/entry")
        assert status == 200 and answer["model_version_status"][0]["state"] == "AVAILABLE", answer
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
