"""Key types on a real server: the ones its checks accept complete real TLS handshakes, and an Ed25519 or Ed448 server
key (which grpcio's BoringSSL cannot use: a server that served nothing, or "Failed to bind") is exit 2 at start naming
``--ssl_config_file`` and ``server_key``. Keys and certificates are made by the ``openssl`` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from openssl_certs import OpensslCa
from procs import ServerProcess, free_port
from tls_certs import ssl_config_text

from monolith_serving.client.health import check_health
from monolith_serving.core.tls_channel import ChannelTls

pytestmark = pytest.mark.integration


def write_config(ca: OpensslCa, key: Path, cert: Path, *, client_verify: bool) -> Path:
    path = ca.folder / f"{key.stem}.ssl.config"
    custom_ca = ca.cert.read_text() if client_verify else ""
    path.write_text(
        ssl_config_text(key=key.read_text(), cert=cert.read_text(), custom_ca=custom_ca, client_verify=client_verify)
    )
    return path


def unified_args(config: Path) -> list[str]:
    return [f"--port={free_port()}", "--agent_address=127.0.0.1:1", f"--ssl_config_file={config}"]


@pytest.mark.parametrize(
    ("ca_type", "leaf_type"), [("rsa", "rsa"), ("p256", "p256"), ("p384", "p384"), ("ed25519", "p256")]
)
def test_accepted_key_types_complete_mutual_tls_handshakes(tmp_path: Path, ca_type: str, leaf_type: str) -> None:
    """RSA and ECDSA keys, under a CA of the same type or an Ed25519 one (whose signatures BoringSSL verifies)."""
    ca = OpensslCa.create(tmp_path / "certs", ca_type)
    server_key, server_cert = ca.issue("server", leaf_type, server=True)
    client_key, client_cert = ca.issue("client", leaf_type, server=False)
    port = free_port()
    args = [
        f"--port={port}",
        "--host=127.0.0.1",
        f"--agent_address=127.0.0.1:{free_port()}",
        f"--ssl_config_file={write_config(ca, server_key, server_cert, client_verify=True)}",
    ]
    tls = ChannelTls(
        root_certificates=ca.cert.read_text(),
        certificate_chain=client_cert.read_text(),
        private_key=client_key.read_text(),
    )
    # Started means SERVING to a health check over TLS that presents the client certificate.
    with ServerProcess("unified", args, port=port, log_path=tmp_path / "unified.log", tls=tls) as unified:
        assert check_health(unified.address, tls=tls).status == "SERVING"


@pytest.mark.parametrize(("key_type", "type_name"), [("ed25519", "Ed25519"), ("ed448", "Ed448")])
def test_an_edwards_server_key_stops_the_server_with_exit_2(tmp_path: Path, key_type: str, type_name: str) -> None:
    ca = OpensslCa.create(tmp_path / "certs", "p256")
    key, cert = ca.issue("server", key_type, server=True)
    config = write_config(ca, key, cert, client_verify=False)
    done = subprocess.run(
        [sys.executable, "-m", "monolith_serving", "unified", *unified_args(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,  # before the check, an Ed25519 key gave a server that ran (and failed every handshake)
    )
    assert done.returncode == 2, done.stderr
    expected = f"--ssl_config_file {config}: server_key holds an {type_name} private key, which gRPC's TLS does not"
    assert expected in done.stderr and "use an RSA or ECDSA key" in done.stderr, done.stderr
    key_lines = [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
    assert not [line for line in key_lines if line in done.stdout + done.stderr], "the private key was printed"
