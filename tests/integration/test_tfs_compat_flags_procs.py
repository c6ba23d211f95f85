"""Real ``monolith-serving`` processes started with the command lines Monolith's agent gives tensorflow_model_server
(ps_0, ps_1, dense_0 and the entry as its v1 agent does, a unified server as its v3 agent does): each one serves,
logs one warning naming the flags it does not use, and the entry's Predict equals the numpy reference."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
import tfs_command_lines as monolith
from entry_reference import assert_entry_predicts_reference
from procs import ServerProcess, free_port

from monolith_serving.core.demo_export import DemoOptions, write_demo

pytestmark = pytest.mark.integration

ROWS = 50
WARNING = "tensorflow_model_server flags"


def _server(command: str, tmp_path: Path, name: str, argv_of: monolith.ArgvBuilder, extra: list[str]) -> ServerProcess:
    """``command`` run with Monolith's argv for ``name`` (its model config written under ``tmp_path``)."""
    port = free_port()
    platform = tmp_path / "conf" / "platform_config_file.cfg"  # Monolith writes one; we never read it
    argv = argv_of(tmp_path / f"{name}.config", platform, port, free_port(), free_port())
    return ServerProcess(
        command,
        [*argv, *extra],
        port=port,
        log_path=tmp_path / f"{name}.log",
        env={"PORT2": str(free_port())},  # the agent's port: Monolith starts its children with it set
    )


def _one_warning(proc: ServerProcess) -> str:
    lines = [line for line in proc.log_path.read_text().splitlines() if WARNING in line]
    assert len(lines) == 1, proc.log_tail()
    assert " ERROR " not in proc.log_path.read_text(), proc.log_tail()
    return lines[0]


def test_servers_started_with_monoliths_command_lines_serve(tmp_path: Path) -> None:
    export = tmp_path / "export"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS, dense_alone=True))
    for name in ("ps_0", "ps_1", "dense_0", "entry"):
        (tmp_path / f"{name}.config").write_text(monolith.model_config(name, export / name))
    (tmp_path / "unified.config").write_text("model_config_list {}\n")

    ps = [_server("ps", tmp_path, f"ps_{i}", monolith.v1_ps, []) for i in range(2)]
    dense = _server("dense", tmp_path, "dense_0", monolith.v1_dense, [])
    # Monolith's entry finds its PS and dense replicas through the agent's HeartBeat on $PORT2; without an agent
    # here, our static-target flags stand in for it.
    targets = [arg for proc in ps for arg in ("--ps_targets", proc.address)]
    entry = _server("entry", tmp_path, "entry", monolith.v1_entry, [*targets, "--dense_targets", dense.address])
    unified = _server("unified", tmp_path, "unified", monolith.v3_unified, [])
    with ExitStack() as running:  # stops them in reverse order
        for proc in (*ps, dense, entry, unified):
            running.enter_context(proc)
        assert_entry_predicts_reference(entry.address, export, rows=ROWS, seed=5)

    for proc in (*ps, dense, entry, unified):
        assert "--platform_config_file" in _one_warning(proc)
    assert "--enable_batching --archon_port" in _one_warning(dense)  # given twice, named once
    assert "--archon_entry_to_ps_rpc_timeout" not in _one_warning(entry)  # honoured: its fetch_ps_timeout_ms
    assert "--model_config_file_poll_wait_seconds" not in _one_warning(unified)  # honoured: re-reads its file
