"""A real, throw-away ZooKeeper server for integration tests.

Runs Debian's ZooKeeper (``/usr/share/java/zookeeper.jar``) as a child JVM on a free loopback port with its
own temporary config and data directory. ``stop()`` + ``start()`` reuse the same port and data dir, so a
client's session survives a short outage and expires for real after a long one (session-expiry tests).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ports import free_port

ZK_JAR = Path("/usr/share/java/zookeeper.jar")
# The packaged zkServer.sh disables logging; running the main class with log4j on the classpath keeps the
# server log available (in <tmp>/zookeeper.log) for debugging a failed test.
LOG_JARS = (Path("/usr/share/java/slf4j-log4j12.jar"), Path("/usr/share/java/log4j-1.2.jar"))
LOG4J_TEMPLATE = Path("/etc/zookeeper/conf/log4j.properties")
MAIN_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"


class ZooKeeperUnavailable(RuntimeError):
    """Java or the Debian zookeeper package is missing, or the server did not come up."""


def four_letter_word(port: int, word: str, timeout_s: float = 1.0) -> str:
    """Send a ZooKeeper four-letter command (must be whitelisted in zoo.cfg); return the reply text."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(word.encode("ascii"))
        chunks: list[bytes] = []
        while True:
            data = sock.recv(4096)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def check_prerequisites() -> str:
    """Return the java executable path, or raise ZooKeeperUnavailable saying what to install."""
    java = shutil.which("java")
    if java is None:
        raise ZooKeeperUnavailable("java not found on PATH; install it with `apt-get install -y zookeeper`")
    if not ZK_JAR.exists():
        raise ZooKeeperUnavailable(f"{ZK_JAR} not found; install Debian's ZooKeeper: `apt-get install -y zookeeper`")
    return java


class ZooKeeperServer:
    """One standalone ZooKeeper process. Not thread-safe; meant for one test session or one test.

    ``tick_time_ms`` bounds the negotiated session timeout to [2, 20] ticks, so tests can ask for short
    sessions (e.g. 4 s with the default 200 ms tick).
    """

    def __init__(self, *, tick_time_ms: int = 200, start_timeout_s: float = 30.0) -> None:
        self._java = check_prerequisites()
        self._tick_time_ms = tick_time_ms
        self._start_timeout_s = start_timeout_s
        self._root = Path(tempfile.mkdtemp(prefix="zk-harness-"))
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = self._root / "zookeeper.out"
        self._write_config()

    @property
    def hosts(self) -> str:
        """Connection string for kazoo / our ZkDiscovery."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def min_session_timeout_s(self) -> float:
        return 2 * self._tick_time_ms / 1000.0

    def _write_config(self) -> None:
        conf = self._root / "conf"
        data = self._root / "data"
        conf.mkdir()
        data.mkdir()
        (conf / "zoo.cfg").write_text(
            "\n".join(
                [
                    f"tickTime={self._tick_time_ms}",
                    "initLimit=10",
                    "syncLimit=5",
                    f"dataDir={data}",
                    f"clientPort={self.port}",
                    "clientPortAddress=127.0.0.1",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr,mntr,stat,cons",
                    "maxClientCnxns=200",
                    "",
                ]
            )
        )
        if LOG4J_TEMPLATE.exists():
            shutil.copy(LOG4J_TEMPLATE, conf / "log4j.properties")

    def start(self) -> None:
        """Start (or restart on the same port and data dir) and wait for ``ruok`` → ``imok``. Idempotent."""
        if self.running:
            return
        conf = self._root / "conf"
        classpath = ":".join([str(conf), str(ZK_JAR), *(str(j) for j in LOG_JARS)])
        cmd = [
            self._java,
            "-cp",
            classpath,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-Dzookeeper.root.logger=INFO,ROLLINGFILE",
            f"-Dzookeeper.log.dir={self._root}",
            MAIN_CLASS,
            str(conf / "zoo.cfg"),
        ]
        with self._log_file.open("ab") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ZooKeeperUnavailable(f"ZooKeeper exited with {self._proc.returncode}: {self._tail_log()}")
            try:
                # `ruok` answers as soon as the socket is up; `srvr` says when sessions are accepted.
                if four_letter_word(self.port, "ruok") == "imok" and "not currently serving" not in (
                    four_letter_word(self.port, "srvr")
                ):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ZooKeeperUnavailable(f"ZooKeeper did not answer ruok within {self._start_timeout_s}s: {self._tail_log()}")

    def stop(self) -> None:
        """Terminate the server process (data dir kept for a restart). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the temporary directory."""
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def _tail_log(self, max_chars: int = 2000) -> str:
        parts = []
        for path in (self._log_file, self._root / "zookeeper.log"):
            if path.exists():
                parts.append(path.read_text(errors="replace")[-max_chars:])
        return "\n".join(parts) or "(no log output)"

    def __enter__(self) -> ZooKeeperServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def zookeeper_available() -> tuple[bool, str]:
    """(True, "") if the harness can run here, else (False, reason) for a pytest skip message."""
    try:
        check_prerequisites()
    except ZooKeeperUnavailable as exc:
        return False, str(exc)
    return True, ""


__all__ = [
    "ZooKeeperServer",
    "ZooKeeperUnavailable",
    "four_letter_word",
    "zookeeper_available",
]

if __name__ == "__main__":  # manual smoke check: python tests/integration/zk_harness.py
    with ZooKeeperServer() as server:
        print("up on", server.hosts, four_letter_word(server.port, "srvr").splitlines()[0])
