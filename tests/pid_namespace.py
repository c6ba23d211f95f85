"""Running a command as PID 1 of a new PID namespace (`unshare -fp`), as a container runs its entrypoint: PID 1 has
no default signal actions, so a signal it has no handler for is dropped."""

from __future__ import annotations

import functools
import shutil
import subprocess
import time
from pathlib import Path

SKIP_REASON = "needs unshare -p (a PID namespace): root or user namespaces"
"""The skip reason of a test that needs pid_namespaces_work()."""


@functools.cache
def pid_namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-fp", "--mount-proc", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def only_child(pid: int, timeout_s: float = 10.0) -> int:
    """The host pid of ``unshare``'s forked child (PID 1 in the new namespace)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError("unshare forked no child")
