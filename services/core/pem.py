"""Checks of PEM texts (keys and certificates) before gRPC is handed them.

gRPC takes PEM as opaque bytes and reports a bad key, or a key that is not the certificate's, only as "Failed to
bind" on the server's port, or as handshakes that fail later; these checks name what is wrong at start instead. They
parse with Python's ``ssl`` (OpenSSL), never prompting: an encrypted key is refused (gRPC cannot decrypt one).
Every check raises ValueError with a reason the caller prefixes with the flag and field it came from.

Python's OpenSSL reads Edwards-curve keys that gRPC's TLS (BoringSSL, as grpcio builds it) cannot use, so those are
refused here by the key type written in the DER (``core.key_algorithms``): an Ed25519 key of our own (server or
client) passes every other check and then fails every handshake that uses it (the peer offers no Ed25519 signature
algorithm), and Ed448 is not implemented at all (a server fails to bind, a client to create its handshaker, a peer to
verify what an Ed448 key signed). Certificates signed by an Ed25519 CA verify, so Ed25519 is refused in private keys
only.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Iterator

from monolith_serving.core.key_algorithms import certificate_ed448_use, pkcs8_edwards_key_type

# A block's label is repeated in its END line; text around blocks (openssl's "Bag Attributes", comments) is allowed.
_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
CERTIFICATE = "CERTIFICATE"
EC_PARAMETERS = "EC PARAMETERS"
_SUPPORTED_KEY_TYPES = "RSA or ECDSA"


def pem_labels(text: str) -> list[str]:
    """The labels of the PEM blocks in ``text`` (``CERTIFICATE``, ``PRIVATE KEY``, ...), in order."""
    return [match.group(1) for match in _BLOCK.finditer(text)]


def _no_block_reason(text: str) -> str:
    stripped = text.strip()
    if "\n" not in stripped and (stripped.startswith(("/", "./", "~")) or stripped.endswith((".pem", ".crt", ".key"))):
        return f"holds no PEM block but {stripped!r}, which looks like a file name: it takes the PEM text itself"
    return "holds no PEM block (-----BEGIN ...----- to -----END ...-----)"


def _blocks(labels: list[str]) -> str:
    """``a CERTIFICATE block`` / ``2 blocks (CERTIFICATE, X509 CRL)``."""
    if len(labels) == 1:
        return f"a {labels[0]} block"
    return f"{len(labels)} blocks ({', '.join(labels)})"


def check_private_key_pem(text: str) -> None:
    """One unencrypted private key block (PKCS#8 ``PRIVATE KEY``, ``RSA PRIVATE KEY``, ``EC PRIVATE KEY``), nothing
    else but ``EC PARAMETERS`` blocks: ``openssl ecparam -genkey`` writes the curve before the key, and OpenSSL (so
    gRPC and TF Serving) skips it when reading the key. Not an Ed25519 or Ed448 key."""
    labels = pem_labels(text)
    if not labels:
        raise ValueError(_no_block_reason(text))
    labels = [label for label in labels if label != EC_PARAMETERS]
    keys = [label for label in labels if label.endswith("PRIVATE KEY")]
    others = [label for label in labels if not label.endswith("PRIVATE KEY")]
    if not keys:
        if not others:
            raise ValueError(f"holds only {EC_PARAMETERS}, no private key")
        raise ValueError(f"holds {_blocks(others)}, not a private key")
    if len(keys) > 1:
        raise ValueError(f"holds {len(keys)} private keys ({', '.join(keys)}); one expected")
    if CERTIFICATE in others:
        raise ValueError(
            "holds CERTIFICATE blocks as well as the private key: give the key alone (its certificate chain goes in "
            "a file or field of its own)"
        )
    if others:
        raise ValueError(f"holds {_blocks(others)} besides the private key; only the key belongs here")
    (label,) = keys
    if label == "ENCRYPTED PRIVATE KEY" or "Proc-Type: 4,ENCRYPTED" in text:
        raise ValueError("holds an encrypted private key, which gRPC cannot use: decrypt it first")
    if label == "PRIVATE KEY":
        body = next(match.group(2) for match in _BLOCK.finditer(text) if match.group(1) == label)
        key_type = pkcs8_edwards_key_type(body)
        if key_type is not None:
            raise ValueError(
                f"holds an {key_type} private key, which gRPC's TLS does not support (its handshakes fail): "
                f"use an {_SUPPORTED_KEY_TYPES} key"
            )


def check_certificates_pem(text: str) -> None:
    """One or more ``CERTIFICATE`` blocks, each an X.509 certificate OpenSSL can read, none with an Ed448 key or
    signed by one. An Ed448 root in a bundle of roots would do no harm until a peer's chain needs it, but it is
    there to be needed, so it is refused all the same."""
    labels = pem_labels(text)
    if not labels:
        raise ValueError(_no_block_reason(text))
    others = sorted({label for label in labels if label != CERTIFICATE})
    if others:
        raise ValueError(f"holds {', '.join(others)} blocks; only CERTIFICATE blocks belong here")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except ssl.SSLError as error:
        raise ValueError(f"holds a certificate that cannot be read ({error.reason or error})") from None
    bodies = [match.group(2) for match in _BLOCK.finditer(text)]
    for number, body in enumerate(bodies, 1):
        ed448_use = certificate_ed448_use(body)
        if ed448_use is not None:
            where = f" (certificate {number} of {len(bodies)})" if len(bodies) > 1 else ""
            raise ValueError(
                f"holds a certificate with {ed448_use}{where}, which gRPC's TLS does not support (handshakes that "
                f"need it fail): use {_SUPPORTED_KEY_TYPES} keys"
            )


@contextlib.contextmanager
def _memory_file(name: str, data: bytes) -> Iterator[str]:
    """A path to ``data`` that never touches a disk: ``ssl`` reads keys from paths only, and this is a private key."""
    descriptor = os.memfd_create(name)
    try:
        written = 0
        while written < len(data):
            written += os.write(descriptor, data[written:])
        yield f"/proc/self/fd/{descriptor}"
    finally:
        os.close(descriptor)


def _no_password() -> bytes:
    # A key that wants a password is refused by check_private_key_pem; this only keeps OpenSSL from prompting.
    return b""


def check_key_pair(private_key: str, certificate_chain: str) -> None:
    """``private_key`` is readable and is the key of the first certificate of ``certificate_chain`` (both checked by
    the functions above first)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with (
        _memory_file("certificate", certificate_chain.encode()) as cert_path,
        _memory_file("key", private_key.encode()) as key_path,
    ):
        try:
            context.load_cert_chain(cert_path, key_path, password=_no_password)
        except ssl.SSLError as error:
            if error.reason == "KEY_VALUES_MISMATCH":
                raise ValueError("is not the private key of the certificate") from None
            if error.reason == "NO_CERTIFICATE_ASSIGNED":
                # OpenSSL keeps a certificate per key type: a key of another type finds none of its own.
                raise ValueError("is not the private key of the certificate (the key's type differs)") from None
            raise ValueError(f"holds a private key that cannot be read ({error.reason or error})") from None
