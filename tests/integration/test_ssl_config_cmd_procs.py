"""``monolith-serving ssl-config`` as a real process: the file it writes from PEM files starts a proxy serving TLS,
which TLS clients reach (with a client certificate under ``--client_verify``) and ``monolith-serving health`` checks
with its ``--ssl_*`` flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from procs import free_port
from proxy_procs import Proxy
from tls_certs import TlsFiles

from monolith_serving.client.health import check_health
from monolith_serving.core.tls_channel import ChannelTls

pytestmark = pytest.mark.integration


def run_command(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monolith_serving", *(str(arg) for arg in args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_a_proxy_serves_tls_from_the_file_ssl_config_writes(tmp_path: Path) -> None:
    certs = TlsFiles.create(tmp_path / "certs")
    server_cert, server_key = tmp_path / "certs" / "server.pem", tmp_path / "certs" / "server-key.pem"
    server_cert.write_text(certs.server_cert)
    server_key.write_text(certs.server_key)
    config = tmp_path / "ssl.config"
    written = run_command(
        "ssl-config",
        "--server_cert_file", server_cert, "--server_key_file", server_key,
        "--custom_ca_file", certs.ca, "--client_verify", "--out", config,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""

    with_client_cert = ChannelTls(
        root_certificates=certs.ca_pem,
        certificate_chain=certs.client_cert.read_text(),
        private_key=certs.client_key.read_text(),
    )
    args = [f"--ssl_config_file={config}", "--entry_targets", f"127.0.0.1:{free_port()}"]
    with Proxy(tmp_path / "logs", args, name="proxy-ssl-config", tls=with_client_cert) as proxy:
        assert not check_health(proxy.address, tls=ChannelTls(root_certificates=certs.ca_pem)).serving
        assert not check_health(proxy.address).serving  # plaintext
        health = ["health", "--addr", f"localhost:{proxy.port}", "--ssl_ca_file", certs.ca]
        client_cert = ["--ssl_cert_file", certs.client_cert, "--ssl_key_file", certs.client_key]
        done = run_command(*health, *client_cert)
        assert done.returncode == 0, done.stderr
        assert run_command(*health).returncode == 1  # no client certificate: refused
