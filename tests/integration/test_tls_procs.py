"""``--ssl_config_file`` on the servers clients reach, as real processes over real sockets: the entry, the unified
server and the proxy serve their gRPC port over TLS (client certificates required with ``client_verify``), the
client and the proxy dial TLS with their ``--ssl_*`` / ``--entry_ssl_*`` flags, a bad SSLConfig is exit 2 naming the
field, and the PS and dense servers (dialed by entries in plaintext) still refuse the flag.

The CA and the certificates are made here (``tls_certs``); the PS shards stay plaintext, as in production.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from client_cli import run_client
from entry_reference import ReferenceScorer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from procs import ServerProcess, free_port
from proxy_procs import Proxy, start_ps_shards
from tls_certs import Authority, TlsFiles, ssl_config_text, text_proto_string

from monolith_serving.client.health import check_health
from monolith_serving.client.inputs import LogicalExample, encode_instances, predict_request, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.core.tls_channel import ChannelTls
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from monolith_serving.proxy.upstream import UpstreamPool

pytestmark = pytest.mark.integration

ROWS = 50


@dataclass(frozen=True)
class Setup:
    base: Path
    export: Path
    certs: TlsFiles
    ps: tuple[ServerProcess, ...]

    def dial(self, *, client_cert: bool) -> ChannelTls:
        """What a TLS client of this CA presents: the CA as roots, and the client certificate when asked."""
        if not client_cert:
            return ChannelTls(root_certificates=self.certs.ca_pem)
        return ChannelTls(
            root_certificates=self.certs.ca_pem,
            certificate_chain=self.certs.client_cert.read_text(),
            private_key=self.certs.client_key.read_text(),
        )

    def ps_targets(self) -> str:
        return ";".join(server.address for server in self.ps)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("tls")
    export = base / "export"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS))
    certs = TlsFiles.create(base / "certs")
    ps = start_ps_shards(export, base / "logs")
    try:
        yield Setup(base=base, export=export, certs=certs, ps=tuple(ps))
    finally:
        for server in reversed(ps):
            server.stop()


def start_tls_entry(setup: Setup, name: str, *, client_verify: bool) -> ServerProcess:
    port = free_port()
    args = [
        f"--port={port}",
        f"--model_base_path={setup.export / 'entry'}",
        f"--ps_targets={setup.ps_targets()}",
        f"--ssl_config_file={setup.certs.ssl_config(name, client_verify=client_verify)}",
    ]
    server = ServerProcess(
        "entry", args, port=port, log_path=setup.base / "logs" / f"{name}.log", tls=setup.dial(client_cert=True)
    )
    return server.start()


@pytest.fixture(scope="module")
def tls_entry(setup: Setup) -> Iterator[ServerProcess]:
    """An entry serving TLS without asking for client certificates."""
    server = start_tls_entry(setup, "entry-tls", client_verify=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mtls_entry(setup: Setup) -> Iterator[ServerProcess]:
    """An entry serving TLS that requires a client certificate of the test CA (``client_verify``)."""
    server = start_tls_entry(setup, "entry-mtls", client_verify=True)
    try:
        yield server
    finally:
        server.stop()


def examples_and_request(export: Path, seed: int) -> tuple[list[LogicalExample], predict_pb2.PredictRequest]:
    spec = load_serving_spec(export / "entry" / "1")
    examples = random_examples(spec, 4, np.random.default_rng(seed), rows=ROWS)
    return examples, predict_request("entry", {"instances": encode_instances(spec, examples)})


def predict(channel: grpc.Channel, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
    response: predict_pb2.PredictResponse = stub.Predict(request, timeout=20)
    return response


def assert_tls_predict_scores(setup: Setup, address: str, tls: ChannelTls, seed: int) -> None:
    """A Predict over TLS answers the reference's scores."""
    examples, request = examples_and_request(setup.export, seed)
    with grpc.secure_channel(address, tls.credentials(), options=tls.options()) as channel:
        response = predict(channel, request)
    np.testing.assert_allclose(
        from_tensor_proto(response.outputs["scores"], "scores"),
        ReferenceScorer(setup.export, 1).scores(examples),
        rtol=1e-5,
        atol=1e-6,
    )


def plaintext_predict_code(setup: Setup, address: str) -> grpc.StatusCode:
    _, request = examples_and_request(setup.export, 1)
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as failure:
        predict(channel, request)
    return failure.value.code()  # type: ignore[attr-defined,no-any-return]


def log_lines(server: ServerProcess, text: str) -> list[str]:
    return [line for line in server.log_path.read_text().splitlines() if text in line]


# -- serving TLS ------------------------------------------------------------------------------------------------


def test_an_entry_with_tls_answers_tls_clients_and_refuses_plaintext(setup: Setup, tls_entry: ServerProcess) -> None:
    assert_tls_predict_scores(setup, tls_entry.address, setup.dial(client_cert=False), seed=3)
    assert plaintext_predict_code(setup, tls_entry.address) is grpc.StatusCode.UNAVAILABLE
    [line] = log_lines(tls_entry, "serves TLS")
    assert "no client certificate asked for" in line


def test_the_client_dials_tls_with_its_ssl_flags(setup: Setup, tls_entry: ServerProcess) -> None:
    common = ["--spec", str(setup.export), "--rows", str(ROWS), "--json"]
    # localhost and 127.0.0.1 are both names of the server certificate.
    for host in ("localhost", "127.0.0.1"):
        target = f"{host}:{tls_entry.port}"
        done = run_client("predict", "--target", target, "--ssl_ca_file", str(setup.certs.ca), *common)
        assert done.returncode == 0, done.stderr
        assert len(json.loads(done.stdout)["outputs"]["scores"]) == 4
    plain = run_client("predict", "--target", tls_entry.address, *common)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr, plain.stderr
    # A name the certificate does not carry fails; the override names one it does.
    other = ["--target", tls_entry.address, "--ssl_ca_file", str(setup.certs.ca), *common]
    wrong = run_client("predict", *other, "--ssl_target_name_override", "elsewhere.example")
    assert wrong.returncode == 1 and "UNAVAILABLE" in wrong.stderr, wrong.stderr
    right = run_client("predict", *other, "--ssl_target_name_override", "localhost")
    assert right.returncode == 0, right.stderr
    profile = run_client(
        "profile",
        "--target",
        tls_entry.address,
        "--ssl_ca_file",
        str(setup.certs.ca),
        "--workers",
        "2",
        "--duration_s",
        "0.5",
        *common,
    )
    assert profile.returncode == 0, profile.stderr
    result = json.loads(profile.stdout)
    assert result["count"] > 0 and result["errors"] == 0


def test_client_verify_requires_a_client_certificate_of_custom_ca(setup: Setup, mtls_entry: ServerProcess) -> None:
    [line] = log_lines(mtls_entry, "serves TLS")
    assert "client certificates required" in line
    common = ["--target", mtls_entry.address, "--spec", str(setup.export), "--rows", str(ROWS)]
    without = run_client("predict", *common, "--ssl_ca_file", str(setup.certs.ca))
    assert without.returncode == 1 and "UNAVAILABLE" in without.stderr, without.stderr
    # A client certificate of another CA, however valid, is refused.
    foreign_key, foreign_cert = Authority.create("another CA").issue("client", server=False)
    (setup.base / "foreign-client.pem").write_text(foreign_cert)
    (setup.base / "foreign-client-key.pem").write_text(foreign_key)
    foreign_flags = ["--ssl_cert_file", str(setup.base / "foreign-client.pem")]
    foreign_flags += ["--ssl_key_file", str(setup.base / "foreign-client-key.pem")]
    foreign = run_client("predict", *common, "--ssl_ca_file", str(setup.certs.ca), *foreign_flags)
    assert foreign.returncode == 1 and "UNAVAILABLE" in foreign.stderr, foreign.stderr
    client_cert = ["--ssl_cert_file", str(setup.certs.client_cert), "--ssl_key_file", str(setup.certs.client_key)]
    with_cert = run_client("predict", *common, "--ssl_ca_file", str(setup.certs.ca), *client_cert)
    assert with_cert.returncode == 0, with_cert.stderr
    assert "scores:" in with_cert.stdout
    assert_tls_predict_scores(setup, mtls_entry.address, setup.dial(client_cert=True), seed=4)


def run_health(address: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monolith_serving", "health", "--addr", address, *flags],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_health_command_checks_a_tls_server_with_its_ssl_flags(setup: Setup, mtls_entry: ServerProcess) -> None:
    """Container healthchecks run ``monolith-serving health``: it must reach a server that serves TLS."""
    plain = run_health(mtls_entry.address)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr, plain.stderr
    without_cert = run_health(mtls_entry.address, "--ssl_ca_file", str(setup.certs.ca))
    assert without_cert.returncode == 1 and "UNAVAILABLE" in without_cert.stderr, without_cert.stderr
    client_cert = ["--ssl_cert_file", str(setup.certs.client_cert), "--ssl_key_file", str(setup.certs.client_key)]
    done = run_health(mtls_entry.address, "--ssl_ca_file", str(setup.certs.ca), *client_cert)
    assert done.returncode == 0 and "SERVING" in done.stdout, done.stderr
    bad = run_health(mtls_entry.address, "--ssl_key_file", str(setup.certs.client_key))
    assert bad.returncode == 2 and "--ssl_key_file needs --ssl_cert_file" in bad.stderr, bad.stderr


def test_the_proxys_calls_and_probes_to_entries_present_its_entry_ssl_credentials(
    setup: Setup, mtls_entry: ServerProcess
) -> None:
    """The readmission probe shares the channel of the calls: its credentials decide whether a TLS entry that
    requires client certificates is seen healthy."""

    async def probes() -> list[bool]:
        results = []
        for tls in (setup.dial(client_cert=True), setup.dial(client_cert=False), None):
            pool = UpstreamPool(tls=tls)
            try:
                results.append(await pool.probe(mtls_entry.address, 5.0))
            finally:
                await pool.close()
        return results

    assert asyncio.run(probes()) == [True, False, False]


def test_a_tls_proxy_in_front_of_tls_entries(setup: Setup, mtls_entry: ServerProcess) -> None:
    upstream = [
        "--entry_targets",
        mtls_entry.address,
        "--entry_models",
        "entry",
        "--entry_ssl_ca_file",
        str(setup.certs.ca),
        "--entry_ssl_cert_file",
        str(setup.certs.client_cert),
        "--entry_ssl_key_file",
        str(setup.certs.client_key),
    ]
    args = [f"--ssl_config_file={setup.certs.ssl_config('proxy')}", *upstream]
    logs = setup.base / "logs"
    with Proxy(logs, args, name="proxy-tls", tls=setup.dial(client_cert=False)) as proxy:
        assert_tls_predict_scores(setup, proxy.address, setup.dial(client_cert=False), seed=5)
        assert plaintext_predict_code(setup, proxy.address) is grpc.StatusCode.UNAVAILABLE
        [line] = log_lines(proxy, "proxy serving gRPC")
        assert line.endswith("entries dialed in TLS")
        # REST stays plain HTTP, and reaches the entry through the TLS upstream.
        status, body = proxy.rest("GET", "/v1/models/entry")
        assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE", body


def test_a_proxy_without_entry_ssl_flags_cannot_call_a_tls_entry(setup: Setup, tls_entry: ServerProcess) -> None:
    args = ["--entry_targets", tls_entry.address, "--entry_models", "entry"]
    logs = setup.base / "logs"
    with Proxy(logs, args, name="proxy-plain") as proxy:
        assert plaintext_predict_code(setup, proxy.address) is grpc.StatusCode.UNAVAILABLE
    with Proxy(logs, [*args, "--entry_ssl_ca_file", str(setup.certs.ca)], name="proxy-upstream-tls") as proxy:
        examples, request = examples_and_request(setup.export, 6)
        with grpc.insecure_channel(proxy.address) as channel:
            response = predict(channel, request)
        np.testing.assert_allclose(
            from_tensor_proto(response.outputs["scores"], "scores"),
            ReferenceScorer(setup.export, 1).scores(examples),
            rtol=1e-5,
            atol=1e-6,
        )


def test_a_unified_server_serves_tls(setup: Setup) -> None:
    port = free_port()
    args = [
        f"--port={port}",
        "--host=127.0.0.1",
        f"--agent_address=127.0.0.1:{free_port()}",
        f"--ssl-config-file={setup.certs.ssl_config('unified', client_verify=True)}",  # the dashed spelling
    ]
    log_path = setup.base / "logs" / "unified.log"
    with ServerProcess("unified", args, port=port, log_path=log_path, tls=setup.dial(client_cert=True)) as unified:
        # Hosting nothing, it is SERVING; only to a TLS client with a client certificate.
        assert check_health(unified.address, tls=setup.dial(client_cert=False)).status == "UNAVAILABLE"
        with grpc.insecure_channel(unified.address) as channel, pytest.raises(grpc.RpcError) as failure:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert failure.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        [line] = log_lines(unified, "serves TLS")
        assert "client certificates required" in line


# -- refusals ------------------------------------------------------------------------------------------------


def run_server(command: str, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """A server that must exit at start: its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "monolith_serving", command, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


BAD_CONFIGS = {
    "missing-file": (None, "cannot read the file"),
    "not-text-format": ("server_key: [1, 2\n", "not a text-format tensorflow.serving.SSLConfig"),
    "key-without-closing-quote": (
        "unterminated-key",
        "not a text-format tensorflow.serving.SSLConfig: line 1, column 13: a string without its closing quote",
    ),
    "no-key": ("cert", "server_key is missing"),
    "no-cert": ("key", "server_cert is missing"),
    "key-is-a-path": ("key-path", "server_key holds no PEM block"),
    "cert-not-pem": ("cert-garbage", "server_cert holds no PEM block"),
    "key-of-another-cert": ("mismatch", "server_key is not the private key of the certificate"),
    "client-verify-without-ca": ("verify-no-ca", "client_verify is true but custom_ca is empty"),
}


def bad_config(setup: Setup, case: str) -> Path:
    path = setup.base / f"bad-{case}.config"
    kind, _ = BAD_CONFIGS[case]
    certs = setup.certs
    other_key = certs.client_key.read_text()
    texts = {
        "cert": ssl_config_text(cert=certs.server_cert),
        "key": ssl_config_text(key=certs.server_key),
        "key-path": ssl_config_text(key="/etc/ssl/private/server.key", cert=certs.server_cert),
        "cert-garbage": ssl_config_text(key=certs.server_key, cert="not a certificate"),
        "mismatch": ssl_config_text(key=other_key, cert=certs.server_cert),
        "verify-no-ca": ssl_config_text(key=certs.server_key, cert=certs.server_cert, client_verify=True),
        "unterminated-key": f"server_key: {text_proto_string(certs.server_key)[:-1]}\n"
        f"server_cert: {text_proto_string(certs.server_cert)}\n",
    }
    if kind is not None:
        path.write_text(texts.get(kind, kind))
    return path


def server_args(setup: Setup, command: str) -> list[str]:
    """Flags that start ``command`` but for its --ssl_config_file (nothing is dialed before the config is read)."""
    if command == "entry":
        return [f"--port={free_port()}", f"--model_base_path={setup.export / 'entry'}", "--ps_targets=a:1;b:1"]
    if command == "unified":
        return [f"--port={free_port()}", "--agent_address=127.0.0.1:1"]
    return [f"--port={free_port()}", "--entry_targets=127.0.0.1:1"]


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_ssl_config_stops_the_entry_with_exit_2_naming_the_field(setup: Setup, case: str) -> None:
    path = bad_config(setup, case)
    done = run_server("entry", [*server_args(setup, "entry"), f"--ssl_config_file={path}"])
    assert done.returncode == 2, done.stderr
    key_lines = [line for line in setup.certs.server_key.splitlines() if not line.startswith("-----")]
    assert not [line for line in key_lines if line in done.stdout + done.stderr], "the private key was printed"
    assert f"--ssl_config_file {path}" in done.stderr and BAD_CONFIGS[case][1] in done.stderr, done.stderr


@pytest.mark.parametrize("command", ["unified", "proxy"])
@pytest.mark.parametrize("case", ["no-cert", "client-verify-without-ca"])
def test_a_bad_ssl_config_stops_unified_and_proxy_with_exit_2(setup: Setup, command: str, case: str) -> None:
    path = bad_config(setup, case)
    done = run_server(command, [*server_args(setup, command), f"--ssl-config-file={path}"])
    assert done.returncode == 2, done.stderr
    assert f"--ssl_config_file {path}" in done.stderr and BAD_CONFIGS[case][1] in done.stderr, done.stderr


def test_a_bad_client_ssl_flag_is_a_usage_error(setup: Setup) -> None:
    done = run_client("status", "--target", "127.0.0.1:1", "--ssl_cert_file", str(setup.certs.client_cert))
    assert done.returncode == 2 and "--ssl_cert_file needs --ssl_key_file" in done.stderr, done.stderr
    done = run_client("status", "--target", "127.0.0.1:1", "--ssl_ca_file", str(setup.certs.client_key))
    assert done.returncode == 2, done.stderr
    assert f"--ssl_ca_file {setup.certs.client_key}: holds PRIVATE KEY blocks" in done.stderr, done.stderr


@pytest.mark.parametrize("command", ["ps", "dense"])
def test_ps_and_dense_still_refuse_tls_saying_why(setup: Setup, command: str) -> None:
    sub_model = "ps_0" if command == "ps" else "dense_0"
    args = [
        f"--port={free_port()}",
        f"--model_name={sub_model}",
        f"--model_base_path={setup.export / sub_model}",
        f"--ssl_config_file={setup.certs.ssl_config(f'{command}-refused')}",
    ]
    done = run_server(command, args)
    assert done.returncode == 2, done.stderr
    assert "argument --ssl_config_file/--ssl-config-file: TLS is not supported by this server" in done.stderr
    assert "entries dial PS and dense servers in plaintext" in done.stderr, done.stderr
