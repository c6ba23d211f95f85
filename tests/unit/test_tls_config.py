"""``--ssl_config_file`` (core.tls_config) and the ``--ssl_*`` dialing flags (core.tls_channel): a good file or set
of flags reads into frozen settings, anything wrong is an InvalidArgumentError naming the flag and the field."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.protobuf import descriptor_pb2
from tls_certs import PKCS8, TRADITIONAL, Authority, TlsFiles, cert_pem, ssl_config_text, text_proto_string

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.pem import check_certificates_pem, check_key_pair, check_private_key_pem, pem_labels
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


def test_an_empty_flag_is_plaintext() -> None:
    assert server_tls_from_flag("") is None


@pytest.mark.parametrize("value", [" ", "  \t"])
def test_a_blank_flag_is_a_usage_error_not_plaintext(value: str) -> None:
    """TF Serving serves plaintext only for the empty string; a blank value was meant to be a file."""
    with pytest.raises(InvalidArgumentError) as error:
        server_tls_from_flag(value)
    assert error.value.message.startswith(f"--ssl_config_file {value!r}: blank"), error.value.message


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
        "two keys": (ssl_config_text(key=key + other_key, cert=cert), "server_key holds 2 private keys"),
        "key with its certificate": (
            ssl_config_text(key=key + cert, cert=cert),
            "server_key holds CERTIFICATE blocks as well as the private key",
        ),
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
    "key with its certificate",
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


def parse_error_texts(certs: TlsFiles) -> dict[str, tuple[str, str]]:
    """case -> (file text protobuf cannot parse, all the error says after the flag, the file and "not a text-format
    tensorflow.serving.SSLConfig: "), each quoting (part of) the key in protobuf's own message."""
    key, cert = certs.server_key, certs.server_cert
    good = ssl_config_text(key=key, cert=cert)
    unterminated = text_proto_string(key)[:-1]
    return {
        "key without its closing quote": (
            f"server_key: {unterminated}\nserver_cert: {text_proto_string(cert)}\n",
            "line 1, column 13: a string without its closing quote",
        ),
        "key with literal newlines": (
            f'server_key: "{key}"\nserver_cert: {text_proto_string(cert)}\n',
            "line 1, column 13: a string without its closing quote",
        ),
        "byte order mark": (
            "\ufeff" + good,
            "line 1, column 1: a UTF-8 byte order mark (BOM); save the file without it",
        ),
        "unquoted base64": (
            f"server_key: {base64_lines(key)[0]}\n",
            "line 1, column 13: a value that is not a quoted string",
        ),
        "base64 where a field name goes": (
            good + "\n".join(base64_lines(key)) + "\n",
            "line 3, column 1: a field name SSLConfig does not have "
            "(server_key, server_cert, custom_ca, client_verify)",
        ),
    }


def base64_lines(pem: str) -> list[str]:
    """The lines of PEM text between its BEGIN and END lines."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def key_material_in(text: str, pem: str) -> list[str]:
    """The base64 lines of ``pem`` that hold the private key itself found in ``text``, and the start of the first as
    protobuf quotes it as one token (an identifier stops at ``/`` or ``+``). Those are the first two lines of these EC
    keys: the later ones hold the public key, which the certificate holds too."""
    first, second = base64_lines(pem)[:2]
    token = re.split(r"[/+]", first)[0]
    return [piece for piece in (first, second, token) if piece in text]


@pytest.mark.parametrize(
    "case",
    [
        "key without its closing quote",
        "key with literal newlines",
        "byte order mark",
        "unquoted base64",
        "base64 where a field name goes",
    ],
)
def test_a_parse_error_says_where_without_quoting_the_key(certs: TlsFiles, tmp_path: Path, case: str) -> None:
    """Protobuf's message quotes the line and the token it stopped at: here a line of the private key, which would
    go to the server's log."""
    text, where = parse_error_texts(certs)[case]
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgumentError) as error:
        load_server_tls(path)
    message = error.value.message
    assert not key_material_in(message, certs.server_key), message
    assert message == f"--ssl_config_file {path}: not a text-format tensorflow.serving.SSLConfig: {where}"


def test_keys_stay_out_of_repr(certs: TlsFiles) -> None:
    """The settings sit inside the servers' config objects, whose repr may be logged."""
    tls = load_server_tls(certs.ssl_config("repr"))
    dial = tls_dial_from_args(
        dial_args([f"--ssl_cert_file={certs.client_cert}", f"--ssl_key_file={certs.client_key}"]), "ssl"
    )
    assert dial is not None and dial.private_key is not None
    for text in (repr(tls), repr(dial)):
        assert not key_material_in(text, certs.server_key), text
        assert not key_material_in(text, certs.client_key.read_text()), text
    assert base64_lines(certs.server_cert)[0] in repr(tls)  # certificates are public: still shown


def test_a_missing_file_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^--ssl_config_file .*missing\.config: cannot read the file"):
        server_tls_from_flag(str(tmp_path / "missing.config"))


def test_an_rsa_key_in_its_own_pem_label_is_a_private_key() -> None:
    check_private_key_pem("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="encrypted"):
        check_private_key_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END RSA PRIVATE KEY-----\n"
        )


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """Two RSA keys, made once (each takes a while)."""
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


@pytest.mark.parametrize("line_end", ["LF", "CRLF"])
@pytest.mark.parametrize(
    ("kind", "label"), [("rsa", "RSA PRIVATE KEY"), ("ec", "EC PRIVATE KEY"), ("rsa", "PRIVATE KEY")]
)
def test_pkcs1_sec1_and_pkcs8_keys_with_either_line_end_pair_with_their_certificate(
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], kind: str, label: str, line_end: str
) -> None:
    """What openssl writes (PKCS#1 ``RSA PRIVATE KEY``, SEC1 ``EC PRIVATE KEY``) and files saved on Windows are
    accepted; the same checks still refuse the key of another certificate of the same type."""
    authority = Authority.create()
    key_object, other_key = rsa_keys if kind == "rsa" else (ec.generate_private_key(ec.SECP256R1()), None)
    private_format = PKCS8 if label == "PRIVATE KEY" else TRADITIONAL
    key, cert = authority.issue("server", server=True, key=key_object, private_format=private_format)
    _, other_cert = authority.issue("other", server=True, key=other_key)
    if line_end == "CRLF":
        key, cert, other_cert = crlf(key), crlf(cert), crlf(other_cert)
        assert "\n" not in key.replace("\r\n", "")
    assert key.startswith(f"-----BEGIN {label}-----")
    check_private_key_pem(key)
    check_certificates_pem(cert)
    check_key_pair(key, cert)
    with pytest.raises(ValueError, match="^is not the private key of the certificate$"):
        check_key_pair(key, other_cert)


def test_a_key_of_another_type_than_the_certificates_is_named_a_mismatch(
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    """OpenSSL reports it as NO_CERTIFICATE_ASSIGNED (no certificate for the key's type), which is no unreadable key."""
    authority = Authority.create()
    ec_key, ec_cert = authority.issue("ec", server=True)
    rsa_pem, rsa_cert = authority.issue("rsa", server=True, key=rsa_keys[0])
    for key, cert in ((rsa_pem, ec_cert), (ec_key, rsa_cert)):
        with pytest.raises(ValueError) as error:
            check_key_pair(key, cert)
        assert str(error.value) == "is not the private key of the certificate (the key's type differs)"


def test_the_key_openssl_ecparam_genkey_writes_is_accepted(tmp_path: Path) -> None:
    """``openssl ecparam -genkey`` writes an EC PARAMETERS block before the key; OpenSSL, so gRPC and TF Serving,
    skip it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command")
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "ecparam", "-genkey", "-name", "prime256v1", "-out", key_file], check=True)
    subprocess.run(
        [openssl, "req", "-new", "-x509", "-key", key_file, "-subj", "/CN=localhost", "-days", "2", "-out", cert_file],
        check=True,
        capture_output=True,
    )
    key, cert = key_file.read_text(), cert_file.read_text()
    assert pem_labels(key) == ["EC PARAMETERS", "EC PRIVATE KEY"]
    tls = load_server_tls(write(tmp_path, ssl_config_text(key=key, cert=cert)))
    assert tls.server_key == key and tls.server_credentials() is not None
    with pytest.raises(ValueError, match="^holds only EC PARAMETERS, no private key$"):
        check_private_key_pem(key.split("-----BEGIN EC PRIVATE KEY-----")[0])
    with pytest.raises(ValueError, match="^holds 2 private keys"):
        check_private_key_pem(key + key)


@pytest.mark.parametrize("order", ["key first", "certificates first"])
def test_a_key_file_holding_its_certificates_is_refused_saying_so(certs: TlsFiles, order: str) -> None:
    chain = certs.server_cert + certs.ca_pem
    text = certs.server_key + chain if order == "key first" else chain + certs.server_key
    with pytest.raises(ValueError) as error:
        check_private_key_pem(text)
    assert str(error.value).startswith("holds CERTIFICATE blocks as well as the private key: give the key alone")


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
