"""Certificates made in the test: a CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM
files, plus the SSLConfig file (tensorflow_model_server's ``--ssl_config_file``) that serves them.

Made with the ``cryptography`` package (a dev extra). EC P-256 keys: quick to generate, and what gRPC takes; a
leaf may be given another key (RSA) and written in another format (PKCS#1, SEC1) to check what the servers read.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PKCS8 = serialization.PrivateFormat.PKCS8
# PKCS#1 (``RSA PRIVATE KEY``) for an RSA key, SEC1 (``EC PRIVATE KEY``) for an EC key.
TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey, private_format: serialization.PrivateFormat = PKCS8) -> str:
    return key.private_bytes(serialization.Encoding.PEM, private_format, serialization.NoEncryption()).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, key: PrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "monolith-serving test CA") -> Authority:
        key = _key()
        cert = (
            _builder(name, _name(name), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        name: str,
        *,
        server: bool,
        key: PrivateKey | None = None,
        private_format: serialization.PrivateFormat = PKCS8,
    ) -> tuple[str, str]:
        """(key PEM, certificate PEM) of a leaf (of ``key``, default a new EC key): a server's names are localhost and
        127.0.0.1."""
        key = _key() if key is None else key
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = _builder(name, self.cert.subject, key).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return key_pem(key, private_format), cert_pem(builder.sign(self.key, hashes.SHA256()))


def text_proto_string(text: str) -> str:
    """``text`` as a text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def ssl_config_text(*, key: str = "", cert: str = "", custom_ca: str = "", client_verify: bool = False) -> str:
    """A text-format SSLConfig with the fields given (empty ones left out)."""
    lines = [
        f"{field}: {text_proto_string(value)}"
        for field, value in (("server_key", key), ("server_cert", cert), ("custom_ca", custom_ca))
        if value
    ]
    if client_verify:
        lines.append("client_verify: true")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TlsFiles:
    """A CA with a server and a client certificate, written under one folder."""

    folder: Path
    ca: Path
    server_key: str
    server_cert: str
    ca_pem: str
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, folder: Path) -> TlsFiles:
        folder.mkdir(parents=True, exist_ok=True)
        authority = Authority.create()
        server_key, server_cert = authority.issue("server", server=True)
        client_key, client_cert = authority.issue("client", server=False)
        ca_pem = cert_pem(authority.cert)
        paths = {"ca.pem": ca_pem, "client.pem": client_cert, "client-key.pem": client_key}
        for name, text in paths.items():
            (folder / name).write_text(text)
        return cls(
            folder=folder,
            ca=folder / "ca.pem",
            server_key=server_key,
            server_cert=server_cert,
            ca_pem=ca_pem,
            client_cert=folder / "client.pem",
            client_key=folder / "client-key.pem",
        )

    def ssl_config(self, name: str, *, client_verify: bool = False) -> Path:
        """An SSLConfig file serving the server certificate; with ``client_verify``, client certificates of this CA
        are required."""
        path = self.folder / f"{name}.ssl.config"
        text = ssl_config_text(
            key=self.server_key,
            cert=self.server_cert,
            custom_ca=self.ca_pem if client_verify else "",
            client_verify=client_verify,
        )
        path.write_text(text)
        return path
