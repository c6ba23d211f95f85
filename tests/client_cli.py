"""``monolith-serving client`` run as users run it: a child process of this interpreter, its output captured.

Importable from every test directory (tests/conftest.py puts ``tests/`` on sys.path), like ``ports``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def client_command(*args: str) -> list[str]:
    """The argv of ``monolith-serving client <args>`` on this interpreter (the package as installed in it)."""
    return [sys.executable, "-m", "monolith_serving", "client", *args]


def run_client(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """The client's exit status and text output; ``env`` is added to this process's environment.

    A non-zero exit is returned, not raised: tests check usage errors too. The timeout turns a hang into a
    failure (subprocess.TimeoutExpired) instead of a stuck test run.
    """
    environ = {**os.environ, **env} if env is not None else None
    return subprocess.run(
        client_command(*args), capture_output=True, text=True, check=False, timeout=timeout_s, cwd=cwd, env=environ
    )
