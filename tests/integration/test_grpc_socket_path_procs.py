"""``--grpc_socket_path`` on real processes: the entry, the proxy, the unified, ps and dense servers serve gRPC on a
UNIX domain socket besides their port (TLS too, with the port's credentials), ``monolith-serving health`` and
``client`` reach them at ``unix:PATH``, a socket file left by a dead server is taken over, one a live server listens
on is not, a bad path is exit 2 naming the flag, and the socket file is gone after SIGTERM."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from client_cli import run_client
from entry_reference import ReferenceScorer, assert_entry_predicts_reference, assert_outputs_match
from procs import ServerProcess, free_port
from proxy_procs import Proxy, start_ps_shards
from tls_certs import TlsFiles

from monolith_serving.client.inputs import encode_instances, predict_request, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.core.tls_channel import ChannelTls
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

pytestmark = pytest.mark.integration

ROWS = 50


@dataclass(frozen=True)
class Setup:
    base: Path
    export: Path
    ps: tuple[ServerProcess, ...]

    def entry_args(self, port: int, socket_path: Path, *extra: str) -> list[str]:
        targets = ";".join(server.address for server in self.ps)
        return [
            f"--port={port}",
            f"--model_base_path={self.export / 'entry'}",
            f"--ps_targets={targets}",
            f"--grpc_socket_path={socket_path}",
            *extra,
        ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("gsock")
    export = base / "export"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS))
    ps = start_ps_shards(export, base / "logs")
    try:
        yield Setup(base=base, export=export, ps=tuple(ps))
    finally:
        for server in reversed(ps):
            server.stop()


class SocketServer(ServerProcess):
    """A server whose readiness is checked over its UNIX socket; ``tcp_address`` is its port's."""

    def __init__(
        self,
        command: str,
        args: Sequence[str],
        *,
        port: int,
        socket_path: Path,
        log_path: Path,
        tls: ChannelTls | None = None,
    ) -> None:
        super().__init__(command, args, port=port, log_path=log_path, tls=tls)
        self.socket_path = socket_path

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def tcp_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SocketServer:
        super().start()
        return self


def start_entry(setup: Setup, name: str, *extra: str) -> SocketServer:
    port = free_port()
    path = setup.base / f"{name}.sock"
    args = setup.entry_args(port, path, *extra)
    log_path = setup.base / "logs" / f"{name}.log"
    return SocketServer("entry", args, port=port, socket_path=path, log_path=log_path).start()


@pytest.fixture(scope="module")
def entry(setup: Setup) -> Iterator[SocketServer]:
    server = start_entry(setup, "entry")
    try:
        yield server
    finally:
        server.stop()


def run_command(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``monolith-serving <command> <args>`` to its end: its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "monolith_serving", command, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a killed server leaves it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def stop_and_check_socket_removed(server: SocketServer) -> None:
    """SIGTERM: the server exits 0 and its socket file is gone."""
    assert server.socket_path.exists()
    assert server.stop() == 0
    assert not server.socket_path.exists()


# -- the entry --------------------------------------------------------------------------------------------------


def test_an_entry_answers_predict_over_its_socket_and_its_port(setup: Setup, entry: SocketServer) -> None:
    assert_entry_predicts_reference(entry.address, setup.export, rows=ROWS, seed=1)
    assert_entry_predicts_reference(entry.tcp_address, setup.export, rows=ROWS, seed=2)
    [line] = [line for line in entry.log_path.read_text().splitlines() if "entry listening on" in line]
    assert line.endswith(f"and unix:{entry.socket_path} (2 PS shards)"), line


def test_health_and_client_reach_an_entry_at_unix_targets(setup: Setup, entry: SocketServer) -> None:
    done = run_command("health", "--addr", entry.address)
    assert done.returncode == 0 and done.stdout.strip() == f"{entry.address} SERVING", (done.stdout, done.stderr)
    predicted = run_client("predict", "--target", entry.address, "--spec", str(setup.export), "--rows", str(ROWS))
    assert predicted.returncode == 0 and "scores:" in predicted.stdout, predicted.stderr
    status = run_client("status", "--target", entry.address, "--model", "entry")
    assert status.returncode == 0 and "AVAILABLE" in status.stdout, status.stderr


def test_a_second_server_on_a_live_socket_is_exit_2_and_the_first_keeps_serving(
    setup: Setup, entry: SocketServer
) -> None:
    """gRPC's bind alone would unlink the first server's socket file, leaving it unreachable there."""
    done = run_command("entry", *setup.entry_args(free_port(), entry.socket_path))
    assert done.returncode == 2, done.stderr
    assert f"--grpc_socket_path '{entry.socket_path}': a server is listening on this socket already" in done.stderr
    assert_entry_predicts_reference(entry.address, setup.export, rows=ROWS, seed=3)


def test_a_stale_socket_is_taken_over_and_removed_after_sigterm(setup: Setup) -> None:
    path = setup.base / "stale.sock"
    stale_socket(path)
    server = start_entry(setup, "stale")
    try:
        assert_entry_predicts_reference(server.address, setup.export, rows=ROWS, seed=4)
        log = server.log_path.read_text()
        assert f"--grpc_socket_path {path}: removing the socket file left by a server that is gone" in log
        stop_and_check_socket_removed(server)
    finally:
        server.stop()


def test_bad_socket_paths_are_exit_2_naming_the_flag(setup: Setup) -> None:
    not_a_socket = setup.base / "notes.txt"
    not_a_socket.write_text("keep me")
    too_long = setup.base / ("s" * 120)
    missing = setup.base / "nowhere" / "grpc.sock"
    cases = {
        not_a_socket: "exists and is not a socket; refusing to delete it",
        too_long: "bytes long; a UNIX socket path holds at most 107",
        missing: "does not exist",
    }
    for path, message in cases.items():
        done = run_command("entry", *setup.entry_args(free_port(), path))
        assert done.returncode == 2, (path, done.stderr)
        assert f"--grpc_socket_path '{path}'" in done.stderr and message in done.stderr, done.stderr
    assert not_a_socket.read_text() == "keep me"


# -- TLS --------------------------------------------------------------------------------------------------------


def test_with_tls_the_socket_serves_tls_only_with_the_ports_credentials(setup: Setup) -> None:
    certs = TlsFiles.create(setup.base / "certs")
    port, path = free_port(), setup.base / "tls.sock"
    ssl_config = certs.ssl_config("entry-socket", client_verify=True)
    args = setup.entry_args(port, path, f"--ssl_config_file={ssl_config}")
    # gRPC checks the certificate of a unix: target against the target's path: name one the certificate carries.
    tls = ChannelTls(
        root_certificates=certs.ca_pem,
        certificate_chain=certs.client_cert.read_text(),
        private_key=certs.client_key.read_text(),
        target_name_override="localhost",
    )
    log_path = setup.base / "logs" / "tls.log"
    server = SocketServer("entry", args, port=port, socket_path=path, log_path=log_path, tls=tls).start()
    try:
        spec = load_serving_spec(setup.export / "entry" / "1")
        examples = random_examples(spec, 4, np.random.default_rng(5), rows=ROWS)
        request = predict_request("entry", {"instances": encode_instances(spec, examples)})
        with grpc.secure_channel(server.address, tls.credentials(), options=tls.options()) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
            response: predict_pb2.PredictResponse = stub.Predict(request, timeout=20)
        assert_outputs_match(response, ReferenceScorer(setup.export, 1).outputs(examples))
        client_tls = ["--ssl_ca_file", str(certs.ca)]
        client_tls += ["--ssl_cert_file", str(certs.client_cert), "--ssl_key_file", str(certs.client_key)]
        done = run_command("health", "--addr", server.address, *client_tls, "--ssl_target_name_override", "localhost")
        assert done.returncode == 0 and "SERVING" in done.stdout, done.stderr
        unnamed = run_command("health", "--addr", server.address, *client_tls)
        assert unnamed.returncode == 1 and "UNAVAILABLE" in unnamed.stderr, unnamed.stderr
        plain = run_command("health", "--addr", server.address)
        assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr, plain.stderr
        log = server.log_path.read_text()
        assert f"gRPC also listens on unix:{path}, serving TLS (--ssl_config_file" in log
        assert "client certificates required" in log
        stop_and_check_socket_removed(server)
    finally:
        server.stop()


# -- the proxy and the other model servers ----------------------------------------------------------------------


class SocketProxy(Proxy):
    def __init__(self, logs: Path, args: Sequence[str], *, socket_path: Path) -> None:
        super().__init__(logs, [*args, "--grpc_socket_path", str(socket_path)], name="proxy-socket")
        self.socket_path = socket_path

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"


def test_a_proxy_serves_its_grpc_api_on_its_socket(setup: Setup, entry: SocketServer) -> None:
    """The proxy itself dials the entry at its TCP address, as discovery gives it."""
    path = setup.base / "proxy.sock"
    proxy = SocketProxy(setup.base / "logs", ["--entry_targets", entry.tcp_address], socket_path=path)
    proxy.start()
    try:
        assert_entry_predicts_reference(proxy.address, setup.export, rows=ROWS, seed=6)
        assert_entry_predicts_reference(f"127.0.0.1:{proxy.port}", setup.export, rows=ROWS, seed=7)
        status, body = proxy.rest("GET", "/v1/models/entry")  # REST stays on its TCP port
        assert status == 200, body
        assert proxy.stop() == 0
        assert not path.exists()
    finally:
        proxy.stop()


@pytest.mark.parametrize("command", ["ps", "dense", "unified"])
def test_the_ps_dense_and_unified_servers_serve_health_on_their_socket(
    setup: Setup, tmp_path_factory: pytest.TempPathFactory, command: str
) -> None:
    port, path = free_port(), setup.base / f"{command}.sock"
    if command == "ps":
        source = ["--model_name=ps_0", f"--model_base_path={setup.export / 'ps_0'}", "--num_ps=2"]
    elif command == "dense":
        export = tmp_path_factory.mktemp("dense") / "export"
        write_demo(DemoOptions(out=export, num_ps=1, rows=ROWS, dense_alone=True))
        source = ["--model_name=dense_0", f"--model_base_path={export / 'dense_0'}"]
    else:
        source = [f"--agent_address=127.0.0.1:{free_port()}"]  # hosting nothing, it is SERVING
    args = ["--host=127.0.0.1", f"--port={port}", f"--grpc_socket_path={path}", *source]
    log_path = setup.base / "logs" / f"{command}-socket.log"
    server = SocketServer(command, args, port=port, socket_path=path, log_path=log_path).start()
    try:
        done = run_command("health", "--addr", server.address)
        assert done.returncode == 0 and "SERVING" in done.stdout, done.stderr
        over_port = run_command("health", "--addr", server.tcp_address)
        assert over_port.returncode == 0 and "SERVING" in over_port.stdout, over_port.stderr
        stop_and_check_socket_removed(server)
    finally:
        server.stop()
