"""Keys and certificates made by the ``openssl`` command, as an operator makes them: ``openssl genpkey`` keys (PKCS#8
``PRIVATE KEY`` for every type) of the types ``tls_certs`` (``cryptography``) does not make, Ed25519 and Ed448 among
them, and certificates a CA of any of those types signs. The tests that use it skip without the command.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

# ``openssl genpkey`` options by key type.
KEY_TYPES = {
    "rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "ed25519": ["-algorithm", "ED25519"],
    "ed448": ["-algorithm", "ED448"],
}
EDWARDS = ("ed25519", "ed448")


def openssl_command() -> str:
    command = shutil.which("openssl")
    if command is None:
        pytest.skip("needs the openssl command")
    return command


def _run(*args: str | Path) -> None:
    subprocess.run([openssl_command(), *(str(arg) for arg in args)], check=True, capture_output=True)


def _digest(key_type: str) -> list[str]:
    # Edwards keys sign with their own hash: openssl refuses a digest option for them.
    return [] if key_type in EDWARDS else ["-sha256"]


def make_key(path: Path, key_type: str) -> Path:
    _run("genpkey", *KEY_TYPES[key_type], "-out", path)
    return path


@dataclass(frozen=True)
class OpensslCa:
    """A self-signed CA of ``key_type`` in ``folder`` (``<name>-key.pem``, ``<name>.pem``)."""

    folder: Path
    key_type: str
    key: Path
    cert: Path

    @classmethod
    def create(cls, folder: Path, key_type: str, name: str = "ca") -> OpensslCa:
        folder.mkdir(parents=True, exist_ok=True)
        key = make_key(folder / f"{name}-key.pem", key_type)
        cert = folder / f"{name}.pem"
        _run(
            "req", "-new", "-x509", "-key", key, *_digest(key_type), "-subj", f"/CN={name}", "-days", "2",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", cert,
        )  # fmt: skip
        return cls(folder, key_type, key, cert)

    def issue(self, name: str, key_type: str, *, server: bool) -> tuple[Path, Path]:
        """(key file, certificate file) of a new leaf of ``key_type``: a server's names are localhost and 127.0.0.1."""
        key = make_key(self.folder / f"{name}-key.pem", key_type)
        request, extensions, cert = (self.folder / f"{name}{suffix}" for suffix in (".csr", ".ext", ".pem"))
        _run("req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", request)
        usage = "serverAuth" if server else "clientAuth"
        names = "subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else ""
        extensions.write_text(f"extendedKeyUsage={usage}\n{names}")
        _run(
            "x509", "-req", "-in", request, "-CA", self.cert, "-CAkey", self.key, *_digest(self.key_type),
            "-set_serial", str(secrets.randbits(63)), "-days", "2", "-extfile", extensions, "-out", cert,
        )  # fmt: skip
        return key, cert
