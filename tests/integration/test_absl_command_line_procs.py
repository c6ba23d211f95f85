"""Real ``monolith-serving`` processes started with absl's command-line syntax (core.absl_argv): two PS shards and
an entry whose tensorflow_model_server command lines (Monolith's agent's) sit in flagfiles, one naming another,
with one-dash flags on the command line and in the files; they serve, the flags given later win, and the entry's
Predict equals the numpy reference. ``--version`` prints our distribution's version and exits 0."""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path

import pytest
import tfs_command_lines as monolith
from entry_reference import assert_entry_predicts_reference
from procs import ServerProcess, free_port

from monolith_serving.core.demo_export import DemoOptions, write_demo

pytestmark = pytest.mark.integration

ROWS = 50
PLATFORM = Path("/opt/tiger/monolith_serving/conf/platform_config_file.cfg")  # named, never read


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _ps(tmp_path: Path, export: Path, shard: int) -> ServerProcess:
    """ps_<shard>: Monolith's command line in a flagfile, its --port overridden by a later ``-port`` argument."""
    name = f"ps_{shard}"
    config = _write(tmp_path / f"{name}.config", monolith.model_config(name, export / name))
    # The file's port is free too, so a server that took it would still start: the health check on the later
    # port is what tells.
    argv = monolith.v1_ps(config, PLATFORM, free_port(), free_port(), free_port())
    flags = _write(tmp_path / f"{name}.flags", monolith.flagfile(argv, title=f"{name} of Monolith's v1 agent"))
    port = free_port()
    return ServerProcess("ps", [f"-flagfile={flags}", "-port", str(port)], port=port, log_path=tmp_path / f"{name}.log")


def test_servers_take_flagfiles_and_single_dash_flags(tmp_path: Path) -> None:
    export = tmp_path / "export"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS))
    ps = [_ps(tmp_path, export, shard) for shard in range(2)]

    # Shard order is meaning: the entry sends shard i's fids to the i-th --ps_targets, so a reordering of the
    # nested file's lines would break the scores below.
    targets = _write(
        tmp_path / "ps_targets.flags",
        monolith.flagfile([f"-ps_targets={proc.address}" for proc in ps], title="static PS replicas"),
    )
    config = _write(tmp_path / "entry.config", monolith.model_config("entry", export / "entry"))
    entry_argv = monolith.single_dash(monolith.v1_entry(config, PLATFORM, free_port(), free_port(), free_port()))
    entry_flags = _write(
        tmp_path / "entry.flags",
        monolith.flagfile([*entry_argv, f"--flagfile={targets}", "--nocoalesce_requests"], title="the entry"),
    )
    port = free_port()
    entry = ServerProcess(
        "entry",
        ["-flagfile", str(entry_flags), "-port", str(port), "-coalesce_ps_lookups"],
        port=port,
        log_path=tmp_path / "entry.log",
        env={"PORT2": str(free_port())},  # Monolith's agent port: unused with static PS targets
    )
    with ExitStack() as running:  # stops them in reverse order
        for proc in (*ps, entry):
            running.enter_context(proc)
        assert_entry_predicts_reference(entry.address, export, rows=ROWS, seed=7)
    for proc in ps:
        # The files' tensorflow_model_server flags reached the parser: named in the one warning of unused ones.
        assert "tensorflow_model_server flags: --rest_api_port --platform_config_file" in proc.log_path.read_text()
    # The entry serves TF Serving's REST API on the file's --rest_api_port, as tensorflow_model_server does.
    assert "tensorflow_model_server flags: --platform_config_file" in entry.log_path.read_text()


def test_version_prints_our_distribution_version_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "monolith_serving", "ps", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"monolith-serving ps {metadata.version('monolith-serving')}\n"


def test_a_missing_flagfile_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent.flags"
    done = subprocess.run(
        [sys.executable, "-m", "monolith_serving", "entry", f"-flagfile={missing}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert f"cannot read flagfile '{missing}'" in done.stderr
    assert "Traceback" not in done.stderr
