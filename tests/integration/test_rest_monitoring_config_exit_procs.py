"""A ``--monitoring_config_file`` that cannot work stops the entry, the unified server and the proxy at start: exit
status 2 and one log line naming the flag, the file and what is wrong, before anything is bound."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from procs import free_port

pytestmark = pytest.mark.integration

# What each server needs besides, to reach its REST flags (nothing is dialed: the config is refused first).
SERVER_ARGS = {
    "entry": ["--model_base_path=/nonexistent/entry", "--ps_targets=127.0.0.1:1"],
    "unified": ["--agent_address=127.0.0.1:1"],
    "proxy": ["--entry_targets=127.0.0.1:1"],
}


def _exit(command: str, argv: list[str], tmp_path: Path) -> tuple[int, str]:
    """Runs ``monolith-serving command`` to its exit; (status, its output)."""
    args = [
        sys.executable,
        "-m",
        "monolith_serving",
        command,
        "--host=127.0.0.1",
        f"--port={free_port()}",
        *SERVER_ARGS[command],
        *argv,
    ]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"{command} started serving with {argv}:\n{error.stderr}") from None
    return done.returncode, done.stdout + done.stderr


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "monitoring.config"
    path.write_text(text)
    return path


@pytest.mark.parametrize("command", ["entry", "unified", "proxy"])
def test_a_monitoring_config_without_a_rest_port_exits_2(command: str, tmp_path: Path) -> None:
    config = _config(tmp_path, "prometheus_config { enable: true }\n")
    status, output = _exit(command, [f"--monitoring_config_file={config}"], tmp_path)
    assert status == 2, output
    assert f"--monitoring_config_file {config} configures the REST port, but --rest_api_port is 0" in output


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [
        ("entry", None, "cannot read the file: [Errno 2] No such file or directory"),
        ("entry", "prometheus_config { enabled: true }\n", "not a text-format tensorflow.serving.MonitoringConfig"),
        ("unified", 'prometheus_config { enable: true path: "metrics" }\n', "must start with '/'"),
        ("proxy", 'prometheus_config { enable: true path: "/v1/metrics" }\n', "is under /v1/"),
    ],
)
def test_a_bad_monitoring_config_exits_2_naming_the_flag(
    command: str, text: str | None, message: str, tmp_path: Path
) -> None:
    config = tmp_path / "missing.config" if text is None else _config(tmp_path, text)
    argv = [f"--rest_api_port={free_port()}", f"--monitoring_config_file={config}"]
    status, output = _exit(command, argv, tmp_path)
    assert status == 2, output
    assert f"--monitoring_config_file {config}: " in output and message in output, output
