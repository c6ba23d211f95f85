"""Dialing a gRPC server over TLS: the ``--ssl_*`` flags of ``monolith-serving client`` and the proxy's
``--entry_ssl_*`` flags for its calls to entries.

A family of four flags, one prefix: ``--<prefix>_ca_file`` (PEM roots the server's certificate must chain to),
``--<prefix>_cert_file`` and ``--<prefix>_key_file`` (a client certificate and its key, for servers with
``client_verify``) and ``--<prefix>_target_name_override`` (the name the server's certificate must carry, when the
address dialed is not one of its names). Any of them turns TLS on; without a CA file the server is verified against
gRPC's default roots. The files are read once, when the flags are resolved, and a bad one is an
InvalidArgumentError naming its flag: a usage error, before anything is dialed.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from monolith_serving.core.cli_flags import add_flag, read_flag_file
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.pem import check_certificates_pem, check_key_pair, check_private_key_pem


@dataclass(frozen=True)
class ChannelTls:
    """What a TLS channel presents and trusts; each PEM None when not given."""

    root_certificates: str | None = None  # None: gRPC's default roots
    certificate_chain: str | None = None
    private_key: str | None = dataclasses.field(default=None, repr=False)  # a secret: not in repr()
    target_name_override: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def encoded(text: str | None) -> bytes | None:
            return text.encode() if text is not None else None

        return grpc.ssl_channel_credentials(
            root_certificates=encoded(self.root_certificates),
            private_key=encoded(self.private_key),
            certificate_chain=encoded(self.certificate_chain),
        )

    def options(self) -> list[tuple[str, Any]]:
        if self.target_name_override is None:
            return []
        return [("grpc.ssl_target_name_override", self.target_name_override)]


def aio_channel(address: str, tls: ChannelTls | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A grpc.aio channel to ``address``: plaintext when ``tls`` is None, else TLS as it says."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.credentials(), options=[*options, *tls.options()])


def _flag(prefix: str, kind: str) -> str:
    """``_flag("ssl", "ca_file")`` is ``--ssl_ca_file``; its argparse dest is the same without the dashes."""
    return f"--{prefix}_{kind}"


def add_tls_dial_flags(parser: argparse.ArgumentParser | Any, prefix: str, *, server: str) -> None:
    """The four flags of ``prefix`` (``ssl``: ``--ssl_ca_file`` ...); ``server`` names what is dialed, for help."""
    cert_flag, key_flag = _flag(prefix, "cert_file"), _flag(prefix, "key_file")
    add_flag(
        parser,
        _flag(prefix, "ca_file"),
        type=Path,
        default=None,
        help=f"dial {server} over TLS, verifying its certificate against these PEM roots (any --{prefix}_* flag turns "
        "TLS on; without this one, gRPC's default roots)",
    )
    add_flag(
        parser,
        cert_flag,
        type=Path,
        default=None,
        help=f"PEM client certificate (chain) to present to {server} (with {key_flag}; for client_verify)",
    )
    add_flag(parser, key_flag, type=Path, default=None, help=f"PEM private key of {cert_flag}")
    add_flag(
        parser,
        _flag(prefix, "target_name_override"),
        default=None,
        help=f"the name {server}'s certificate must carry, when the address dialed is not one of its names",
    )


def read_pem_file(flag: str, path: Path, check: Callable[[str], None]) -> str:
    """The text of the PEM file ``flag`` names, which ``check`` (a ``core.pem`` check) passed; InvalidArgumentError
    naming the flag otherwise."""
    text = read_flag_file(flag, path)
    try:
        check(text)
    except ValueError as error:
        raise InvalidArgumentError(f"{flag} {path}: {error}") from None
    return text


def tls_dial_from_args(args: argparse.Namespace, prefix: str) -> ChannelTls | None:
    """The flags of ``prefix`` read and checked; None when none is given (plaintext)."""
    ca_file: Path | None = getattr(args, f"{prefix}_ca_file")
    cert_file: Path | None = getattr(args, f"{prefix}_cert_file")
    key_file: Path | None = getattr(args, f"{prefix}_key_file")
    name_override: str | None = getattr(args, f"{prefix}_target_name_override")
    if ca_file is None and cert_file is None and key_file is None and name_override is None:
        return None
    cert_flag, key_flag = _flag(prefix, "cert_file"), _flag(prefix, "key_file")
    if cert_file is None and key_file is not None:
        raise InvalidArgumentError(f"{key_flag} needs {cert_flag}: a private key goes with its certificate")
    if cert_file is not None and key_file is None:
        raise InvalidArgumentError(f"{cert_flag} needs {key_flag}: a client certificate goes with its private key")
    if name_override is not None and not name_override.strip():
        raise InvalidArgumentError(f"{_flag(prefix, 'target_name_override')} is empty")
    roots = None if ca_file is None else read_pem_file(_flag(prefix, "ca_file"), ca_file, check_certificates_pem)
    chain = key = None
    if cert_file is not None and key_file is not None:
        chain = read_pem_file(cert_flag, cert_file, check_certificates_pem)
        key = read_pem_file(key_flag, key_file, check_private_key_pem)
        try:
            check_key_pair(key, chain)
        except ValueError as error:
            raise InvalidArgumentError(f"{key_flag} {key_file}: {error} ({cert_flag} {cert_file})") from None
    return ChannelTls(
        root_certificates=roots, certificate_chain=chain, private_key=key, target_name_override=name_override
    )
