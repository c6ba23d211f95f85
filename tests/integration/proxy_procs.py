"""Process helpers of the proxy integration tests: fake entries, real PS shards and entries, and proxies on loopback
ports; ``EntryBehindProxy`` puts them together over a demo export."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from procs import ServerProcess, free_port
from rest_calls import metric_samples, metric_value, rest_json

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import ServingSpec, load_serving_spec
from monolith_serving.core.tls_channel import ChannelTls

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


def start_ps_shards(export: Path, logs: Path, num_ps: int = 2) -> list[ServerProcess]:
    """A ``ps`` server for each ``ps_<i>`` sub_graph of ``export``, one after the other, each SERVING when returned."""
    servers: list[ServerProcess] = []
    for shard in range(num_ps):
        port = free_port()
        args = [
            "--host=127.0.0.1",
            f"--port={port}",
            f"--model_name=ps_{shard}",
            f"--model_base_path={export / f'ps_{shard}'}",
            f"--num_ps={num_ps}",
        ]
        servers.append(ServerProcess("ps", args, port=port, log_path=logs / f"ps_{shard}.log").start())
    return servers


def start_entry(export: Path, ps: Sequence[ServerProcess], log_path: Path, extra: Sequence[str] = ()) -> ServerProcess:
    """An ``entry`` server of ``export``'s entry sub_graph over the ``ps`` servers (static --ps_targets), SERVING;
    ``extra`` flags are added (``--dense_targets``, ...)."""
    port = free_port()
    targets = ";".join(server.address for server in ps)
    args = [f"--port={port}", f"--model_base_path={export / 'entry'}", f"--ps_targets={targets}", *extra]
    return ServerProcess("entry", args, port=port, log_path=log_path).start()


class Proxy(ServerProcess):
    def __init__(
        self, tmp_path: Path, args: Sequence[str], *, name: str = "proxy", tls: ChannelTls | None = None
    ) -> None:
        """``tls``: the gRPC port serves TLS (``--ssl_config_file`` in ``args``); readiness is checked with it."""
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
            tls=tls,
        )

    def rest(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """One HTTP call to the REST API; returns (status, parsed JSON body)."""
        return rest_json(self.rest_port, method, path, body)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample of the proxy's /metrics (0 when absent)."""
        return metric_value(self.metrics_port, name, labels)

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample called ``name`` on the proxy's /metrics, as (labels, value)."""
        return metric_samples(self.metrics_port, name)


class EntryBehindProxy:
    """A demo model served whole: ``options``' export written, a ``ps`` per shard, a ``dense`` server of ``dense_0``
    when ``options.dense_alone``, the entry over them and a proxy in front, each SERVING (logs under ``logs``).
    ``stop()`` stops them in reverse order; a failed start stops those already started."""

    def __init__(self, options: DemoOptions, logs: Path) -> None:
        self.export = options.out
        write_demo(options)
        self.spec: ServingSpec = load_serving_spec(self.export / "entry" / str(options.version))
        self.servers: list[ServerProcess] = []
        try:
            self.servers.extend(start_ps_shards(self.export, logs, options.num_ps))
            ps = list(self.servers)
            extra = []
            if options.dense_alone:
                port = free_port()
                args = [f"--port={port}", "--model_name=dense_0", f"--model_base_path={self.export / 'dense_0'}"]
                dense = ServerProcess("dense", args, port=port, log_path=logs / "dense.log")
                self.servers.append(dense)  # before start(): one that never serves is stopped too
                dense.start()
                extra.append(f"--dense_targets={dense.address}")
            self.entry = start_entry(self.export, ps, logs / "entry.log", extra)
            self.servers.append(self.entry)
            self.proxy = Proxy(logs, ["--entry_targets", self.entry.address, "--entry_models", "entry"])
            self.servers.append(self.proxy)
            self.proxy.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
