"""SIGTERM to a command running as PID 1 (a container's entrypoint) before its server is up: the kernel drops a
signal PID 1 has no handler for, so without one the pod waited out its grace period for the SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pid_namespace import SKIP_REASON, only_child, pid_namespaces_work

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not pid_namespaces_work(), reason=SKIP_REASON)
def test_sigterm_to_pid_1_during_start_up_ends_the_command(tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text("bzid b\nbase_name m\nbase_path /nonexistent\ndeploy_type ps\n")
    command = [sys.executable, "-m", "monolith_serving", "agent", "--conf", str(conf), "--work_dir", str(tmp_path)]
    launcher = subprocess.Popen(
        ["unshare", "-fp", "--mount-proc", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        pid_1 = only_child(launcher.pid)
        # Every 20 ms until it ends: the interpreter's own start-up drops them (no handler can exist yet), then
        # one lands during the imports (a few hundred ms), before any event loop handler exists. Without the
        # early handler they are all dropped until the loop's handler stops the agent normally (exit 0).
        deadline = time.monotonic() + 20
        while launcher.poll() is None and time.monotonic() < deadline:
            subprocess.run(["kill", "-TERM", str(pid_1)], check=False, capture_output=True)
            time.sleep(0.02)
        code = launcher.wait(timeout=20)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.stdout is not None
    output = launcher.stdout.read().decode(errors="replace")
    assert code == 128 + signal.SIGTERM, output
