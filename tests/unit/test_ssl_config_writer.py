"""``monolith-serving ssl-config``: the SSLConfig it writes from PEM files is one ``load_server_tls`` accepts, with the
PEM texts unchanged; a file is replaced atomically with mode 0600; bad input is exit 2 naming the flag and leaves an
existing file alone."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tls_certs import Authority, cert_pem

from monolith_serving.cli import main
from monolith_serving.core.tls_config import load_server_tls


@dataclass(frozen=True)
class Pem:
    """PEM files of a CA and a server certificate it issued, plus another key."""

    ca: Path
    cert: Path
    key: Path
    other_key: Path


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Pem:
    folder = tmp_path_factory.mktemp("pem")
    authority = Authority.create()
    key, cert = authority.issue("server", server=True)
    other_key, _ = authority.issue("other", server=True)
    files = {"ca.pem": cert_pem(authority.cert), "server.pem": cert, "server-key.pem": key, "other-key.pem": other_key}
    for name, text in files.items():
        (folder / name).write_text(text)
    return Pem(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem", folder / "other-key.pem")


def ssl_config(*flags: str | Path) -> int:
    return main(["ssl-config", *(str(flag) for flag in flags)])


def server_flags(pem: Pem) -> list[str | Path]:
    return ["--server_cert_file", pem.cert, "--server_key_file", pem.key]


@pytest.mark.parametrize("client_verify", [False, True])
def test_the_text_on_stdout_is_an_ssl_config_the_servers_accept(
    pem: Pem, client_verify: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [*server_flags(pem), "--custom_ca_file", pem.ca] if client_verify else server_flags(pem)
    assert ssl_config(*flags, *(["--client_verify"] if client_verify else [])) == 0
    text = capsys.readouterr().out
    assert "\\n" in text and "-----BEGIN PRIVATE KEY-----\n" not in text  # PEM newlines escaped in the strings
    path = tmp_path / "ssl.config"
    path.write_text(text)
    tls = load_server_tls(path)
    assert tls.server_cert == pem.cert.read_text() and tls.server_key == pem.key.read_text()
    assert tls.client_verify is client_verify
    assert tls.custom_ca == (pem.ca.read_text() if client_verify else None)


def test_client_verify_takes_absl_bool_values(pem: Pem, tmp_path: Path) -> None:
    out = tmp_path / "ssl.config"
    assert ssl_config(*server_flags(pem), "--custom_ca_file", pem.ca, "--client_verify=false", "--out", out) == 0
    tls = load_server_tls(out)
    assert not tls.client_verify and tls.custom_ca == pem.ca.read_text()  # written, unused by the servers


def test_out_replaces_the_file_atomically_with_mode_0600(pem: Pem, tmp_path: Path) -> None:
    out = tmp_path / "ssl.config"
    out.write_text("old")
    out.chmod(0o644)
    assert ssl_config(*server_flags(pem), "--out", out) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert load_server_tls(out).server_key == pem.key.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ssl.config"]  # no temp file left beside it


def _encrypted_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()


def _bad_flags(pem: Pem, case: str, tmp_path: Path) -> list[str | Path]:
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_text(_encrypted_key())
    missing = tmp_path / "missing.pem"
    key_and_chain = pem.ca.parent / "key-and-chain.pem"  # as a proxy like HAProxy takes it
    key_and_chain.write_text(pem.key.read_text() + pem.cert.read_text() + pem.ca.read_text())
    cases: dict[str, list[str | Path]] = {
        "missing-cert": ["--server_cert_file", missing, "--server_key_file", pem.key],
        "cert-is-a-key": ["--server_cert_file", pem.key, "--server_key_file", pem.key],
        "key-is-a-cert": ["--server_cert_file", pem.cert, "--server_key_file", pem.cert],
        "encrypted-key": ["--server_cert_file", pem.cert, "--server_key_file", encrypted],
        "key-with-its-chain": ["--server_cert_file", pem.cert, "--server_key_file", key_and_chain],
        "key-of-another-cert": ["--server_cert_file", pem.cert, "--server_key_file", pem.other_key],
        "ca-is-a-key": [*server_flags(pem), "--custom_ca_file", pem.key],
        "verify-without-ca": [*server_flags(pem), "--client_verify"],
    }
    return cases[case]


BAD = {
    "missing-cert": "--server_cert_file {tmp}/missing.pem: cannot read the file",
    "cert-is-a-key": "--server_cert_file {pem}/server-key.pem: holds PRIVATE KEY blocks",
    "key-is-a-cert": "--server_key_file {pem}/server.pem: holds a CERTIFICATE block, not a private key",
    "encrypted-key": "--server_key_file {tmp}/encrypted-key.pem: holds an encrypted private key",
    "key-with-its-chain": "--server_key_file {pem}/key-and-chain.pem: holds CERTIFICATE blocks as well as the private "
    "key: give the key alone",
    "key-of-another-cert": "--server_key_file {pem}/other-key.pem: is not the private key of the certificate",
    "ca-is-a-key": "--custom_ca_file {pem}/server-key.pem: holds PRIVATE KEY blocks",
    "verify-without-ca": "--client_verify needs --custom_ca_file",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_exit_2_naming_the_flag_and_keeps_the_old_file(
    pem: Pem, case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ssl.config"
    out.write_text("old")
    assert ssl_config(*_bad_flags(pem, case, tmp_path), "--out", out) == 2
    message = BAD[case].format(tmp=tmp_path, pem=pem.ca.parent)
    assert message in capsys.readouterr().err
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encrypted-key.pem", "ssl.config"]


def test_an_out_folder_that_does_not_exist_is_exit_2_naming_out(
    pem: Pem, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "absent" / "ssl.config"
    assert ssl_config(*server_flags(pem), "--out", out) == 2
    assert f"--out {out}: cannot write there" in capsys.readouterr().err


def test_a_bad_client_verify_value_is_a_usage_error(pem: Pem, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ssl_config(*server_flags(pem), "--client_verify=maybe")
    assert exit_.value.code == 2
    assert "--client_verify" in capsys.readouterr().err


def test_the_cert_and_key_flags_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ssl_config("--server_cert_file", "x.pem")
    assert exit_.value.code == 2
    assert "--server_key_file" in capsys.readouterr().err
