"""Checks of PEM texts (keys and certificates) before gRPC is handed them.

gRPC takes PEM as opaque bytes and reports a bad key, or a key that is not the certificate's, only as "Failed to
bind" on the server's port, or as handshakes that fail later; these checks name what is wrong at start instead. They
parse with Python's ``ssl`` (OpenSSL), never prompting: an encrypted key is refused (gRPC cannot decrypt one).
Every check raises ValueError with a reason the caller prefixes with the flag and field it came from.

Python's OpenSSL reads Edwards-curve keys that gRPC's TLS (BoringSSL, as grpcio builds it) cannot use, so those are
refused here by the key type written in the DER: an Ed25519 key of our own (server or client) passes every other check
and then fails every handshake that uses it (the peer offers no Ed25519 signature algorithm), and Ed448 is not
implemented at all (a server fails to bind, a client to create its handshaker, a peer to verify what an Ed448 key
signed). Certificates signed by an Ed25519 CA verify, so Ed25519 is refused in private keys only.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import re
import ssl
from collections.abc import Iterator

# A block's label is repeated in its END line; text around blocks (openssl's "Bag Attributes", comments) is allowed.
_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
CERTIFICATE = "CERTIFICATE"
EC_PARAMETERS = "EC PARAMETERS"


# Key types gRPC's TLS cannot use, by the DER content of their algorithm identifiers (RFC 8410: 1.3.101.112, .113).
_ED25519_OID = bytes.fromhex("2b6570")
_ED448_OID = bytes.fromhex("2b6571")
_EDWARDS_KEY_TYPES = {_ED25519_OID: "Ed25519", _ED448_OID: "Ed448"}
_SUPPORTED_KEY_TYPES = "RSA or ECDSA"
_DER_SEQUENCE, _DER_OID, _DER_VERSION = 0x30, 0x06, 0xA0


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


def _der_elements(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) of each DER element ``data`` is a series of; ValueError when it is not DER. Only what keys
    and certificates use: low tag numbers, definite lengths."""
    elements = []
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise ValueError("truncated DER")
        tag, length = data[offset], data[offset + 1]
        offset += 2
        if length & 0x80:
            size = length & 0x7F
            if not 0 < size <= 4 or offset + size > len(data):
                raise ValueError("bad DER length")
            length = int.from_bytes(data[offset : offset + size], "big")
            offset += size
        if offset + length > len(data):
            raise ValueError("truncated DER")
        elements.append((tag, data[offset : offset + length]))
        offset += length
    return elements


def _children(element: tuple[int, bytes]) -> list[tuple[int, bytes]]:
    """The elements of a SEQUENCE element; ValueError for another one."""
    tag, content = element
    if tag != _DER_SEQUENCE:
        raise ValueError("not a DER SEQUENCE")
    return _der_elements(content)


def _algorithm_oid(identifier: tuple[int, bytes]) -> bytes:
    """The OID of an AlgorithmIdentifier (a SEQUENCE: the OID, then parameters, if any)."""
    oid_tag, oid = _children(identifier)[0]
    if oid_tag != _DER_OID:
        raise ValueError("not an AlgorithmIdentifier")
    return oid


def _block_sequence(body: str) -> list[tuple[int, bytes]]:
    """The elements of the SEQUENCE a PEM block's base64 ``body`` encodes (a key or a certificate is one)."""
    (outer,) = _der_elements(binascii.a2b_base64("".join(body.split())))
    return _children(outer)


# Failures of the parsers above on text that is no key or certificate; the OpenSSL checks report such text.
_NOT_DER = (ValueError, IndexError, binascii.Error)


def _pkcs8_edwards_key_type(body: str) -> str | None:
    """``Ed25519``/``Ed448`` for the body of a PKCS#8 ``PRIVATE KEY`` block of such a key (their only PEM form, what
    ``openssl genpkey`` writes), else None; None too when it cannot be parsed."""
    try:
        # OneAsymmetricKey (RFC 5958): version, privateKeyAlgorithm, privateKey, ...
        algorithm = _algorithm_oid(_block_sequence(body)[1])
    except _NOT_DER:
        return None
    return _EDWARDS_KEY_TYPES.get(algorithm)


def _certificate_ed448_use(body: str) -> str | None:
    """What in the certificate of a ``CERTIFICATE`` block's body is Ed448 (its key, or the key that signed it), or
    None; None too when it cannot be parsed."""
    try:
        # Certificate (RFC 5280): tbsCertificate, signatureAlgorithm, signatureValue; tbsCertificate: [0] version
        # (absent for v1), serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
        tbs_certificate, signature_algorithm = _block_sequence(body)[:2]
        fields = _children(tbs_certificate)
        if fields[0][0] == _DER_VERSION:
            fields = fields[1:]
        key_algorithm = _algorithm_oid(_children(fields[5])[0])
        signed_with = _algorithm_oid(signature_algorithm)
    except _NOT_DER:
        return None
    if key_algorithm == _ED448_OID:
        return "an Ed448 key"
    if signed_with == _ED448_OID:
        return "a signature by an Ed448 key"
    return None


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
        key_type = _pkcs8_edwards_key_type(body)
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
        ed448_use = _certificate_ed448_use(body)
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
