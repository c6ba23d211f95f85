"""Key types gRPC's TLS cannot use are refused at start, naming the flag or field, the file and the types it takes.

OpenSSL (Python's ``ssl``) reads Ed25519 and Ed448 keys, but grpcio's BoringSSL does not negotiate Ed25519 and does
not implement Ed448: an Ed25519 server key gave a server that started and failed every handshake, an Ed25519 client
key failed every handshake with a ``client_verify`` server, and Ed448 failed anywhere (binding, the client's
handshaker, verifying what an Ed448 CA signed). Certificates signed by an Ed25519 CA do verify, and are accepted.
The keys and certificates are made by the ``openssl`` command, as an operator makes them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from openssl_certs import OpensslCa
from tls_certs import ssl_config_text

from monolith_serving.cli import main
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.pem import check_certificates_pem, check_key_pair, check_private_key_pem
from monolith_serving.core.tls_channel import add_tls_dial_flags, tls_dial_from_args
from monolith_serving.core.tls_config import load_server_tls

NOT_SUPPORTED_KEY = (
    "holds an {type} private key, which gRPC's TLS does not support (its handshakes fail): use an RSA or ECDSA key"
)
ED448_CERT = (
    "holds a certificate with {what}, which gRPC's TLS does not support (handshakes that need it fail): "
    "use RSA or ECDSA keys"
)
KEY_TYPE_NAMES = {"ed25519": "Ed25519", "ed448": "Ed448"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openssl")


@pytest.fixture(scope="module")
def p256_ca(folder: Path) -> OpensslCa:
    return OpensslCa.create(folder / "p256", "p256")


@pytest.fixture(scope="module")
def ed448_ca(folder: Path) -> OpensslCa:
    return OpensslCa.create(folder / "ed448", "ed448")


def key_lines(key: Path) -> list[str]:
    """The base64 lines of a PEM key file: none may be in an error message."""
    return [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]


def assert_no_key_material(text: str, *keys: Path) -> None:
    for key in keys:
        assert not [line for line in key_lines(key) if line in text], f"key material in {text!r}"


def write_config(path: Path, key: Path, cert: Path, custom_ca: Path | None = None) -> Path:
    path.write_text(
        ssl_config_text(
            key=key.read_text(),
            cert=cert.read_text(),
            custom_ca=custom_ca.read_text() if custom_ca is not None else "",
            client_verify=custom_ca is not None,
        )
    )
    return path


def dial_args(argv: list[str], prefix: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_tls_dial_flags(parser, prefix, server="the server")
    return parser.parse_args(argv)


# -- what is refused --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ed25519", "ed448"])
def test_edwards_private_keys_are_refused_naming_the_type_and_the_supported_ones(
    p256_ca: OpensslCa, key_type: str
) -> None:
    key, _ = p256_ca.issue(f"key-{key_type}", key_type, server=True)
    with pytest.raises(ValueError) as error:
        check_private_key_pem(key.read_text())
    assert str(error.value) == NOT_SUPPORTED_KEY.format(type=KEY_TYPE_NAMES[key_type])


@pytest.mark.parametrize("key_type", ["ed25519", "ed448"])
def test_an_edwards_server_key_is_refused_naming_ssl_config_file_and_server_key(
    p256_ca: OpensslCa, key_type: str, tmp_path: Path
) -> None:
    key, cert = p256_ca.issue(f"server-{key_type}", key_type, server=True)
    path = write_config(tmp_path / "ssl.config", key, cert, custom_ca=p256_ca.cert)
    with pytest.raises(InvalidArgumentError) as error:
        load_server_tls(path)
    type_name = KEY_TYPE_NAMES[key_type]
    assert error.value.message == f"--ssl_config_file {path}: server_key " + NOT_SUPPORTED_KEY.format(type=type_name)
    assert_no_key_material(error.value.message, key)


def test_an_ed448_ca_is_refused_as_custom_ca_and_what_it_signed_as_server_cert(
    p256_ca: OpensslCa, ed448_ca: OpensslCa, tmp_path: Path
) -> None:
    key, cert = p256_ca.issue("server-for-ed448-ca", "p256", server=True)
    path = write_config(tmp_path / "custom-ca.config", key, cert, custom_ca=ed448_ca.cert)
    with pytest.raises(InvalidArgumentError) as error:
        load_server_tls(path)
    assert error.value.message == f"--ssl_config_file {path}: custom_ca " + ED448_CERT.format(what="an Ed448 key")

    key, cert = ed448_ca.issue("server-of-ed448-ca", "p256", server=True)
    chain = tmp_path / "chain.pem"
    chain.write_text(cert.read_text() + p256_ca.cert.read_text())
    path = write_config(tmp_path / "server-cert.config", key, chain)
    with pytest.raises(InvalidArgumentError) as error:
        load_server_tls(path)
    what = "a signature by an Ed448 key (certificate 1 of 2)"
    assert error.value.message == f"--ssl_config_file {path}: server_cert " + ED448_CERT.format(what=what)


@pytest.mark.parametrize("prefix", ["ssl", "entry_ssl"])
@pytest.mark.parametrize("key_type", ["ed25519", "ed448"])
def test_an_edwards_client_key_is_refused_naming_its_flag_and_file(
    p256_ca: OpensslCa, prefix: str, key_type: str
) -> None:
    key, cert = p256_ca.issue(f"client-{key_type}", key_type, server=False)
    if key_type == "ed448":
        # A certificate of an Ed448 key is itself refused, and its flag is read first; the key is refused alone.
        _, cert = p256_ca.issue(f"client-cert-for-{key_type}", "p256", server=False)
    argv = [f"--{prefix}_ca_file={p256_ca.cert}", f"--{prefix}_cert_file={cert}", f"--{prefix}_key_file={key}"]
    with pytest.raises(InvalidArgumentError) as error:
        tls_dial_from_args(dial_args(argv, prefix), prefix)
    expected = f"--{prefix}_key_file {key}: " + NOT_SUPPORTED_KEY.format(type=KEY_TYPE_NAMES[key_type])
    assert error.value.message == expected
    assert_no_key_material(error.value.message, key)


def test_an_ed448_client_certificate_and_ca_file_are_refused_naming_their_flags(
    p256_ca: OpensslCa, ed448_ca: OpensslCa
) -> None:
    key, cert = p256_ca.issue("client-ed448-cert", "ed448", server=False)
    argv = [f"--ssl_cert_file={cert}", f"--ssl_key_file={key}"]
    with pytest.raises(InvalidArgumentError) as error:
        tls_dial_from_args(dial_args(argv, "ssl"), "ssl")
    assert error.value.message == f"--ssl_cert_file {cert}: " + ED448_CERT.format(what="an Ed448 key")
    with pytest.raises(InvalidArgumentError) as error:
        tls_dial_from_args(dial_args([f"--ssl_ca_file={ed448_ca.cert}"], "ssl"), "ssl")
    assert error.value.message == f"--ssl_ca_file {ed448_ca.cert}: " + ED448_CERT.format(what="an Ed448 key")


@pytest.mark.parametrize("key_type", ["ed25519", "ed448"])
def test_ssl_config_refuses_an_edwards_server_key_with_exit_2_naming_its_flag(
    p256_ca: OpensslCa, key_type: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, cert = p256_ca.issue(f"ssl-config-{key_type}", key_type, server=True)
    if key_type == "ed448":
        _, cert = p256_ca.issue(f"ssl-config-cert-for-{key_type}", "p256", server=True)
    out = tmp_path / "ssl.config"
    flags = ["--server_cert_file", str(cert), "--server_key_file", str(key), "--out", str(out)]
    assert main(["ssl-config", *flags]) == 2
    err = capsys.readouterr().err
    expected = f"error: --server_key_file {key}: " + NOT_SUPPORTED_KEY.format(type=KEY_TYPE_NAMES[key_type])
    assert expected in err, err
    assert_no_key_material(err, key)
    assert not out.exists()


# -- what is accepted -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["rsa", "p256", "p384"])
def test_rsa_and_ecdsa_keys_openssl_genpkey_writes_are_accepted(folder: Path, key_type: str) -> None:
    """PKCS#8 keys of the types gRPC takes, signed by a CA of the same type, pass every check."""
    ca = OpensslCa.create(folder / f"accepted-{key_type}", key_type)
    key, cert = ca.issue("server", key_type, server=True)
    check_private_key_pem(key.read_text())
    check_certificates_pem(cert.read_text() + ca.cert.read_text())
    check_key_pair(key.read_text(), cert.read_text())
    tls = load_server_tls(write_config(ca.folder / "ssl.config", key, cert, custom_ca=ca.cert))
    assert tls.client_verify and tls.server_credentials() is not None


def test_certificates_an_ed25519_ca_signed_are_accepted(folder: Path) -> None:
    """BoringSSL verifies Ed25519 signatures on certificates: only Ed25519 keys used in the handshake fail."""
    ca = OpensslCa.create(folder / "ed25519-ca", "ed25519")
    key, cert = ca.issue("server", "p256", server=True)
    client_key, client_cert = ca.issue("client", "p384", server=False)
    check_certificates_pem(ca.cert.read_text())
    check_certificates_pem(cert.read_text() + ca.cert.read_text())
    assert load_server_tls(write_config(ca.folder / "ssl.config", key, cert, custom_ca=ca.cert)).client_verify
    argv = [f"--ssl_ca_file={ca.cert}", f"--ssl_cert_file={client_cert}", f"--ssl_key_file={client_key}"]
    assert tls_dial_from_args(dial_args(argv, "ssl"), "ssl") is not None
