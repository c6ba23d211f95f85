"""Shared by the model-manager tests on real v1 agents: the agents' conf and a ``model-manager run`` process."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from agent_procs import AgentProcess, wait_for
from procs import free_port
from zk_harness import ZooKeeperServer


def agent_conf(zk_server: ZooKeeperServer, bzid: str, export: Path, deploy_type: str) -> str:
    """One task per PS agent (``num_ps 2``, ``num_shard 2``), every child's config pinned to version 1."""
    return (
        f"bzid {bzid}\nbase_name demo\nbase_path {export}\nnum_ps 2\nnum_shard 2\nzk_servers {zk_server.hosts}\n"
        f"deploy_type {deploy_type}\nversion_policy specific\nversion_data 1\nupdate_model_status_interval 0.3\n"
        "fetch_ps_timeout_ms 2000\n"
    )


def v1_cluster_agents(
    tmp_path: Path, zk_server: ZooKeeperServer, bzid: str, export: Path
) -> tuple[list[AgentProcess], dict[str, str]]:
    """Two PS agents (shards 0 and 1, replica 0) and one entry agent of model ``demo``, not started; with the entry
    agent's ports (PORT2 its agent, PORT3 its entry's gRPC)."""
    entry_ports = {"PORT2": str(free_port()), "PORT3": str(free_port())}
    agents = [
        AgentProcess(
            tmp_path,
            f"ps{shard}",
            agent_conf(zk_server, bzid, export, "ps"),
            {"PORT2": str(free_port()), "PORT3": str(free_port()), "SHARD_ID": str(shard), "REPLICA_ID": "0"},
        )
        for shard in (0, 1)
    ]
    agents.append(AgentProcess(tmp_path, "entry", agent_conf(zk_server, bzid, export, "entry"), entry_ports))
    return agents, entry_ports


class ManagerProcess:
    """``model-manager run --model=demo`` on the agents' registry (``extra_args`` appended), its log in
    ``log_path``; /status on its metrics port."""

    def __init__(
        self,
        log_path: Path,
        export: Path,
        zk_server: ZooKeeperServer,
        bzid: str,
        *,
        rollout_timeout_s: float,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.http_port = free_port()
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "monolith_serving", "model-manager", "run", "--model=demo",
                    f"--export_base={export}", f"--zk_servers={zk_server.hosts}", f"--bzid={bzid}",
                    "--host=127.0.0.1", f"--metrics_port={self.http_port}", "--scan_interval_s=0.5",
                    "--poll_interval_s=0.2", "--drain_s=0.5", f"--rollout_timeout_s={rollout_timeout_s:g}",
                    "--resend_interval_s=2", *extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/status", timeout=10) as response:
            return dict(json.loads(response.read())["models"].get("demo", {}))

    def wait_status(self, what: str, predicate: Any, timeout_s: float = 120.0) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def probe() -> bool:
            nonlocal last
            assert self.process.poll() is None, self.log()[-4000:]
            try:
                last = self.status()
            except OSError:
                return False
            return bool(last) and bool(predicate(last))

        try:
            wait_for(what, probe, timeout_s, interval_s=0.2)
        except AssertionError as error:
            raise AssertionError(f"{error}; last status {json.dumps(last)}\n{self.log()[-4000:]}") from None
        return last

    def stop(self) -> None:
        """SIGTERM, SIGKILL if it still runs 20 s later."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
