"""Real ``monolith-serving agent`` processes and ZooKeeper reads for the agent integration tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from procs import STOP_PROBLEMS
from zk_harness import ZooKeeperServer

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 60.0, interval_s: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def v1_agent_conf(zk_server: ZooKeeperServer, bzid: str, export: Path, body: str) -> str:
    """A v1 agent's conf for model ``demo`` of ``export`` (two PS shards), ``body`` appended: its deploy_type etc."""
    return (
        f"bzid {bzid}\nbase_name demo\nbase_path {export}\nnum_ps 2\nzk_servers {zk_server.hosts}\n"
        f"update_model_status_interval 0.3\n{body}"
    )


class AgentProcess:
    """``monolith-serving agent --conf <file>``; its own log and its children's (``--tfs_log``) go to files."""

    def __init__(self, folder: Path, name: str, conf: str, env: Mapping[str, str], *extra: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.conf_path = folder / f"{name}.conf"
        self.conf_path.write_text(conf)
        self.log_path = folder / f"{name}.log"
        self.tfs_log_path = folder / f"{name}.tfs.log"
        self.env = {**os.environ, "MY_HOST_IP": "127.0.0.1", **env}
        self.argv = [
            sys.executable, "-m", "monolith_serving", "agent", "--conf", str(self.conf_path),
            "--tfs_log", str(self.tfs_log_path), "--work_dir", str(folder / f"{name}.work"), *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with open(self.log_path, "wb") as log:
            # Its own process group, as a shell gives a foreground command: ``signal_group`` is then a Ctrl-C.
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def child_pid(self, child: str, nth: int = -1) -> int | None:
        """pid of the ``nth`` start of child ``child`` (from the agent log), None before it started."""
        pids = re.findall(rf"child {re.escape(child)} started \(pid (\d+)\)", self.log())
        return int(pids[nth]) if len(pids) >= (nth + 1 if nth >= 0 else -nth) else None

    def signal_group(self, sig: int = signal.SIGINT) -> None:
        """``sig`` to the agent's whole process group, as a terminal sends Ctrl-C to its foreground job."""
        assert self.process is not None
        os.killpg(self.process.pid, sig)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"agent {self.name} still running after {timeout_s} s:\n{self.log()[-3000:]}") from exc

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            STOP_PROBLEMS.append(f"agent {self.name} did not exit within 30 s of SIGTERM:\n{self.log()[-3000:]}")
            return self.process.wait()
        if code != 0:
            STOP_PROBLEMS.append(f"agent {self.name} exited with {code} on SIGTERM:\n{self.log()[-3000:]}")
        return code


def replica_stats(zk: KazooClient, root: str) -> dict[str, int]:
    """``{"ps:0/0": stat, ...}`` of every v1 replica node under ``/{bzid}/service/{model}``."""
    stats: dict[str, int] = {}
    try:
        tasks = zk.get_children(root)
    except NoNodeError:
        return stats
    for task in tasks:
        try:
            for replica in zk.get_children(f"{root}/{task}"):
                data, _ = zk.get(f"{root}/{task}/{replica}")
                stats[f"{task}/{replica}"] = int(json.loads(data)["stat"])
        except NoNodeError:
            continue
    return stats


def children(zk: KazooClient, path: str) -> list[str]:
    try:
        return sorted(zk.get_children(path))
    except NoNodeError:
        return []


def port_answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
