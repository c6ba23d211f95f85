"""``monolith-serving ssl-config``: writes the SSLConfig file that ``--ssl_config_file`` takes (``core.tls_config``)
from PEM files, so nobody has to paste PEM text with escaped newlines into a text proto by hand.

The PEM files get the checks ``load_server_tls`` applies to the fields they become (``core.pem``), each failure a
usage error (exit 2) naming the flag of the file; ``--client_verify`` without ``--custom_ca_file`` is refused as the
servers refuse ``client_verify`` without ``custom_ca``. Written to ``--out``, the file is replaced atomically (a
sibling temp file, mode 0600 since it holds a private key, renamed over the target once ``load_server_tls`` has
accepted it), so a server never reads half of one; without ``--out`` the text goes to standard output.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from monolith_serving.core.cli_flags import add_bool_flag, add_flag
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.pem import check_certificates_pem, check_key_pair, check_private_key_pem
from monolith_serving.core.tls_channel import read_pem_file
from monolith_serving.core.tls_config import load_server_tls
from monolith_serving.proto_gen.tensorflow_serving.config import ssl_config_pb2

logger = logging.getLogger(__name__)

CERT_FLAG = "--server_cert_file"
KEY_FLAG = "--server_key_file"
CA_FLAG = "--custom_ca_file"
VERIFY_FLAG = "--client_verify"
OUT_FLAG = "--out"


@dataclass(frozen=True)
class SslConfigSources:
    """The PEM files an SSLConfig is made of; ``custom_ca_file`` None when not given."""

    server_cert_file: Path
    server_key_file: Path
    custom_ca_file: Path | None
    client_verify: bool


def build_ssl_config(sources: SslConfigSources) -> ssl_config_pb2.SSLConfig:
    """The SSLConfig of ``sources``, every file read and checked as ``load_server_tls`` checks its field."""
    if sources.client_verify and sources.custom_ca_file is None:
        raise InvalidArgumentError(
            f"{VERIFY_FLAG} needs {CA_FLAG}: the PEM certificates client certificates must chain to "
            "(a server refuses client_verify without custom_ca)"
        )
    cert = read_pem_file(CERT_FLAG, sources.server_cert_file, check_certificates_pem)
    key = read_pem_file(KEY_FLAG, sources.server_key_file, check_private_key_pem)
    try:
        check_key_pair(key, cert)
    except ValueError as error:
        raise InvalidArgumentError(
            f"{KEY_FLAG} {sources.server_key_file}: {error} ({CERT_FLAG} {sources.server_cert_file})"
        ) from None
    custom_ca = (
        "" if sources.custom_ca_file is None else read_pem_file(CA_FLAG, sources.custom_ca_file, check_certificates_pem)
    )
    return ssl_config_pb2.SSLConfig(
        server_key=key, server_cert=cert, custom_ca=custom_ca, client_verify=sources.client_verify
    )


def ssl_config_text(config: ssl_config_pb2.SSLConfig) -> str:
    """Text format, one field a line, each PEM a quoted string with ``\\n`` escapes."""
    return str(text_format.MessageToString(config))


def write_ssl_config(path: Path, text: str) -> None:
    """Replaces ``path`` atomically by ``text``, once ``load_server_tls`` accepts it; InvalidArgumentError naming
    ``--out`` when the folder cannot take the file."""
    try:
        # mkstemp creates the file with mode 0600 whatever the umask: the key is never readable by others.
        descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise InvalidArgumentError(f"{OUT_FLAG} {path}: cannot write there: {error}") from None
    temp = Path(temp_name)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        load_server_tls(temp)
        os.replace(temp, path)
    except OSError as error:
        raise InvalidArgumentError(f"{OUT_FLAG} {path}: cannot write there: {error}") from None
    finally:
        temp.unlink(missing_ok=True)


def configure(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, CERT_FLAG, type=Path, required=True, help="PEM certificate (chain) the server presents")
    add_flag(parser, KEY_FLAG, type=Path, required=True, help=f"unencrypted PEM private key of {CERT_FLAG}")
    add_flag(
        parser,
        CA_FLAG,
        type=Path,
        default=None,
        help=f"PEM certificates client certificates must chain to (custom_ca; required by {VERIFY_FLAG})",
    )
    add_bool_flag(
        parser, VERIFY_FLAG, default=False, help="require a client certificate of the custom CA (client_verify)"
    )
    add_flag(
        parser,
        OUT_FLAG,
        type=Path,
        default=None,
        help="file to write, replaced atomically with mode 0600 (default: standard output)",
    )


def run(args: argparse.Namespace) -> int:
    sources = SslConfigSources(
        server_cert_file=args.server_cert_file,
        server_key_file=args.server_key_file,
        custom_ca_file=args.custom_ca_file,
        client_verify=args.client_verify,
    )
    try:
        text = ssl_config_text(build_ssl_config(sources))
        if args.out is None:
            sys.stdout.write(text)
        else:
            write_ssl_config(args.out, text)
    except InvalidArgumentError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    if sources.custom_ca_file is not None and not sources.client_verify:
        logger.warning(
            "%s without %s: custom_ca is written but unused (no client certificate is asked for)", CA_FLAG, VERIFY_FLAG
        )
    if args.out is not None:
        clients = "client certificates required" if sources.client_verify else "no client certificate asked for"
        logger.info("wrote %s (%s)", args.out, clients)
    return 0
