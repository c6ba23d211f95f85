"""The public-key algorithm of a PEM private key or certificate, read from its DER with the standard library alone.

Python's ``ssl`` reads keys and certificates but does not say which algorithm they use, and ``cryptography`` is not a
dependency of the servers. Only what ``core.pem`` asks is read: whether a PKCS#8 key is Ed25519 or Ed448, and whether
a certificate has an Ed448 key or an Ed448 signature. Anything that cannot be parsed reads as None, so OpenSSL's own
checks report it.
"""

from __future__ import annotations

import binascii

__all__ = ["certificate_ed448_use", "pkcs8_edwards_key_type"]

# Key types gRPC's TLS cannot use, by the DER content of their algorithm identifiers (RFC 8410: 1.3.101.112, .113).
_ED25519_OID = bytes.fromhex("2b6570")
_ED448_OID = bytes.fromhex("2b6571")
_EDWARDS_KEY_TYPES = {_ED25519_OID: "Ed25519", _ED448_OID: "Ed448"}
_DER_SEQUENCE, _DER_OID, _DER_VERSION = 0x30, 0x06, 0xA0


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


def pkcs8_edwards_key_type(body: str) -> str | None:
    """``Ed25519``/``Ed448`` for the body of a PKCS#8 ``PRIVATE KEY`` block of such a key (their only PEM form, what
    ``openssl genpkey`` writes), else None; None too when it cannot be parsed."""
    try:
        # OneAsymmetricKey (RFC 5958): version, privateKeyAlgorithm, privateKey, ...
        algorithm = _algorithm_oid(_block_sequence(body)[1])
    except _NOT_DER:
        return None
    return _EDWARDS_KEY_TYPES.get(algorithm)


def certificate_ed448_use(body: str) -> str | None:
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
