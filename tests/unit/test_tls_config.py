"""``--ssl_config_file`` (core.tls_config) and the ``--ssl_*`` dialing flags (core.tls_channel): a good file or set
of flags reads into frozen settings, anything wrong is an InvalidArgumentError naming the flag and the field."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from tls_certs import Authority, TlsFiles, cert_pem, ssl_config_text

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.pem import check_private_key_pem
from monolith_serving.core.tls_channel import add_tls_dial_flags, tls_dial_from_args
from monolith_serving.core.tls_config import load_server_tls, server_tls_from_flag
from monolith_serving.proto_gen.tensorflow_serving.config import ssl_config_pb2

F = descriptor_pb2.FieldDescriptorProto


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles.create(tmp_path_factory.mktemp("certs"))


def test_ssl_config_has_tf_servings_field_numbers_and_types() -> None:
    """tensorflow_serving/config/ssl_config.proto: server_key = 1, server_cert = 2, custom_ca = 3 (strings),
    client_verify = 4 (bool), message tensorflow.serving.SSLConfig."""
    descriptor = ssl_config_pb2.SSLConfig.DESCRIPTOR
    assert descriptor.full_name == "tensorflow.serving.SSLConfig"
    fields = {field.name: (field.number, field.type) for field in descriptor.fields}
    assert fields == {
        "server_key": (1, F.TYPE_STRING),
        "server_cert": (2, F.TYPE_STRING),
        "custom_ca": (3, F.TYPE_STRING),
        "client_verify": (4, F.TYPE_BOOL),
    }


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ssl.config"
    path.write_text(text)
    return path


def test_a_good_config_is_read_once_into_frozen_settings(certs: TlsFiles, tmp_path: Path) -> None:
    path = certs.ssl_config("good", client_verify=True)
    tls = server_tls_from_flag(str(path))
    assert tls is not None
    assert (tls.server_key, tls.server_cert, tls.custom_ca, tls.client_verify) == (
        certs.server_key,
        certs.server_cert,
        certs.ca_pem,
        True,
    )
    path.unlink()  # read once: nothing reads the file again
    assert tls.server_credentials() is not None
    assert "client certificates required" in tls.describe() and str(path) in tls.describe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        tls.client_verify = False  # type: ignore[misc]
    plain = load_server_tls(certs.ssl_config("no-verify"))
    assert plain.custom_ca is None and "no client certificate asked for" in plain.describe()


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_flag_is_plaintext(value: str) -> None:
    assert server_tls_from_flag(value) is None


def bad_texts(certs: TlsFiles) -> dict[str, tuple[str, str]]:
    """case -> (file text, what the error says after ``--ssl_config_file <path>: ``)."""
    key, cert = certs.server_key, certs.server_cert
    other_key = certs.client_key.read_text()
    encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    return {
        "not text format": ("server_key: [", "not a text-format tensorflow.serving.SSLConfig"),
        "unknown field": ('server_keys: "x"\n', "not a text-format tensorflow.serving.SSLConfig"),
        "no key": (ssl_config_text(cert=cert), "server_key is missing"),
        "no cert": (ssl_config_text(key=key), "server_cert is missing"),
        "key is a file name": (
            ssl_config_text(key="/etc/tls/server.key", cert=cert),
            "server_key holds no PEM block but '/etc/tls/server.key', which looks like a file name",
        ),
        "key is a certificate": (ssl_config_text(key=cert, cert=cert), "server_key holds a CERTIFICATE block"),
        "two keys": (ssl_config_text(key=key + other_key, cert=cert), "server_key holds 2 PEM blocks"),
        "encrypted key": (ssl_config_text(key=encrypted, cert=cert), "server_key holds an encrypted private key"),
        "key garbage": (
            ssl_config_text(key="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", cert=cert),
            "server_key holds a private key that cannot be read",
        ),
        "key of another cert": (
            ssl_config_text(key=other_key, cert=cert),
            "server_key is not the private key of the certificate",
        ),
        "cert not pem": (ssl_config_text(key=key, cert="MIIB..."), "server_cert holds no PEM block"),
        "cert is a key": (ssl_config_text(key=key, cert=key), "server_cert holds PRIVATE KEY blocks"),
        "cert garbage": (
            ssl_config_text(key=key, cert="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            "server_cert holds a certificate that cannot be read",
        ),
        "ca not pem": (ssl_config_text(key=key, cert=cert, custom_ca="ca.pem"), "custom_ca holds no PEM block"),
        "client verify without ca": (
            ssl_config_text(key=key, cert=cert, client_verify=True),
            "client_verify is true but custom_ca is empty",
        ),
    }


CASES = [  # bad_texts' keys
    "not text format",
    "unknown field",
    "no key",
    "no cert",
    "key is a file name",
    "key is a certificate",
    "two keys",
    "encrypted key",
    "key garbage",
    "key of another cert",
    "cert not pem",
    "cert is a key",
    "cert garbage",
    "ca not pem",
    "client verify without ca",
]


def test_every_bad_text_is_a_case(certs: TlsFiles) -> None:
    assert sorted(bad_texts(certs)) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_a_bad_config_names_the_flag_and_the_field(certs: TlsFiles, tmp_path: Path, case: str) -> None:
    text, message = bad_texts(certs)[case]
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgumentError) as error:
        load_server_tls(path)
    assert error.value.message.startswith(f"--ssl_config_file {path}: "), error.value.message
    assert message in error.value.message, error.value.message


def test_a_missing_file_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^--ssl_config_file .*missing\.config: cannot read the file"):
        server_tls_from_flag(str(tmp_path / "missing.config"))


def test_an_rsa_key_in_its_own_pem_label_is_a_private_key() -> None:
    check_private_key_pem("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="encrypted"):
        check_private_key_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END RSA PRIVATE KEY-----\n"
        )


# -- the dialing flags ------------------------------------------------------------------------------------------


def dial_args(argv: list[str], prefix: str = "ssl") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_tls_dial_flags(parser, prefix, server="the server")
    return parser.parse_args(argv)


def test_no_dialing_flag_is_plaintext() -> None:
    assert tls_dial_from_args(dial_args([]), "ssl") is None


def test_dialing_flags_read_their_files(certs: TlsFiles) -> None:
    argv = [
        f"--entry-ssl-ca-file={certs.ca}",  # the dashed spelling
        f"--entry_ssl_cert_file={certs.client_cert}",
        f"--entry_ssl_key_file={certs.client_key}",
        "--entry_ssl_target_name_override=entry.internal",
    ]
    tls = tls_dial_from_args(dial_args(argv, "entry_ssl"), "entry_ssl")
    assert tls is not None
    assert tls.root_certificates == certs.ca_pem
    assert tls.certificate_chain == certs.client_cert.read_text()
    assert tls.private_key == certs.client_key.read_text()
    assert tls.options() == [("grpc.ssl_target_name_override", "entry.internal")]
    assert tls.credentials() is not None
    only_override = tls_dial_from_args(dial_args(["--ssl_target_name_override=x"]), "ssl")
    assert only_override is not None and only_override.root_certificates is None  # gRPC's default roots


def test_bad_dialing_flags_name_the_flag(certs: TlsFiles, tmp_path: Path) -> None:
    other = Authority.create("another CA")
    _, foreign_cert = other.issue("someone", server=False)
    (tmp_path / "foreign.pem").write_text(foreign_cert)
    cases = {
        "--ssl_cert_file needs --ssl_key_file": [f"--ssl_cert_file={certs.client_cert}"],
        "--ssl_key_file needs --ssl_cert_file": [f"--ssl_key_file={certs.client_key}"],
        f"--ssl_ca_file {tmp_path / 'none.pem'}: cannot read the file": [f"--ssl_ca_file={tmp_path / 'none.pem'}"],
        f"--ssl_ca_file {certs.client_key}: holds PRIVATE KEY blocks": [f"--ssl_ca_file={certs.client_key}"],
        f"--ssl_key_file {certs.client_cert}: holds a CERTIFICATE block": [
            f"--ssl_cert_file={certs.client_cert}",
            f"--ssl_key_file={certs.client_cert}",
        ],
        f"--ssl_key_file {certs.client_key}: is not the private key of the certificate": [
            f"--ssl_cert_file={tmp_path / 'foreign.pem'}",
            f"--ssl_key_file={certs.client_key}",
        ],
        "--ssl_target_name_override is empty": ["--ssl_target_name_override="],
    }
    for message, argv in cases.items():
        with pytest.raises(InvalidArgumentError) as error:
            tls_dial_from_args(dial_args(argv), "ssl")
        assert error.value.message.startswith(message), (argv, error.value.message)


def test_a_ca_file_may_hold_several_certificates(certs: TlsFiles, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(certs.ca_pem + cert_pem(Authority.create("second CA").cert))
    tls = tls_dial_from_args(dial_args([f"--ssl_ca_file={bundle}"]), "ssl")
    assert tls is not None and tls.root_certificates == bundle.read_text()
