"""Process helpers of the proxy integration tests: fake entries and proxies on loopback ports."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from procs import ServerProcess, free_port

FAKE_ENTRY = Path(__file__).with_name("proxy_fake_entry.py")


class FakeEntry(ServerProcess):
    """``proxy_fake_entry.py`` as a child process (same readiness/teardown as ServerProcess)."""

    def __init__(self, name: str, tmp_path: Path, *, port: int | None = None, extra: Sequence[str] = ()) -> None:
        port = port or free_port()
        super().__init__(
            "fake-entry",
            ["--port", str(port), "--name", name, *extra],
            port=port,
            log_path=tmp_path / f"fake-{name}-{port}.log",
        )

    def start(self) -> FakeEntry:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(FAKE_ENTRY), *self.args], stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        self.wait_serving()
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


class Proxy(ServerProcess):
    def __init__(self, tmp_path: Path, args: Sequence[str], *, name: str = "proxy") -> None:
        port = free_port()
        self.rest_port = free_port()
        self.metrics_port = free_port()
        super().__init__(
            "proxy",
            [
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--rest_api_port",
                str(self.rest_port),
                "--metrics_port",
                str(self.metrics_port),
                *args,
            ],
            port=port,
            log_path=tmp_path / f"{name}-{port}.log",
        )

    def rest(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """One HTTP call to the REST API; returns (status, parsed JSON body)."""
        import json

        request = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample of the proxy's /metrics (0 when absent)."""
        for sample_labels, value in self.samples(name):
            if all(sample_labels.get(k) == v for k, v in (labels or {}).items()):
                return value
        return 0.0

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample called ``name`` on the proxy's /metrics, as (labels, value)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return [
            (dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        ]
