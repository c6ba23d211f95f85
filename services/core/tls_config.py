"""tensorflow_model_server's ``--ssl_config_file``: TLS on the gRPC port of the servers clients reach.

The file is a text-format ``tensorflow.serving.SSLConfig`` (``protos/tensorflow_serving/config/ssl_config.proto``):
the server's key and certificate as PEM text (not file names), ``custom_ca`` (PEM roots client certificates must chain
to) and ``client_verify`` (require a valid client certificate). As in TF Serving: without ``client_verify`` no client
certificate is asked for; with it one is required and verified. Python's gRPC verifies client certificates only
against roots it is given, so ``client_verify`` without ``custom_ca`` is refused (TF Serving would fall back to
gRPC's default roots, public authorities that should not vouch for a model server's clients).

The file is read once, at start, into ``ServerTls``; anything wrong is an ``InvalidArgumentError`` naming
``--ssl_config_file`` and the field, which the servers turn into exit status 2. Only the gRPC port serves TLS: the
proxy's REST API and every server's /metrics stay plain HTTP, as in TF Serving.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import text_format

from monolith_serving.core.cli_flags import add_flag, read_flag_file
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.pem import check_certificates_pem, check_key_pair, check_private_key_pem
from monolith_serving.proto_gen.tensorflow_serving.config import ssl_config_pb2

FLAG = "--ssl_config_file"


@dataclass(frozen=True)
class ServerTls:
    """A checked SSLConfig. ``custom_ca`` is None when the file gives none."""

    source: Path  # the file it was read from, for log lines
    server_key: str = dataclasses.field(repr=False)  # a secret: not in repr()
    server_cert: str
    custom_ca: str | None
    client_verify: bool

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.server_key.encode(), self.server_cert.encode())],
            root_certificates=self.custom_ca.encode() if self.custom_ca is not None else None,
            require_client_auth=self.client_verify,
        )

    def describe(self) -> str:
        """How clients must connect, for the start-up log line."""
        clients = (
            "client certificates required, verified against custom_ca"
            if self.client_verify
            else "no client certificate asked for"
        )
        return f"TLS ({FLAG} {self.source}): {clients}"


def add_ssl_config_flag(parser: argparse.ArgumentParser) -> None:
    """``--ssl_config_file`` (and ``--ssl-config-file``) as a server that serves TLS declares it."""
    add_flag(
        parser,
        FLAG,
        default="",
        help="text-format tensorflow.serving.SSLConfig: serve the gRPC port over TLS (empty: plaintext)",
    )


def server_tls_from_flag(value: str) -> ServerTls | None:
    """None for an empty value (plaintext, what Monolith's agent passes by default); else the file, read and checked.
    Only the empty string means plaintext, as in TF Serving: a blank one is refused rather than serving plaintext to
    whoever set it hoping for TLS."""
    if value == "":
        return None
    if not value.strip():
        raise InvalidArgumentError(
            f"{FLAG} {value!r}: blank; give the SSLConfig file, or an empty value to serve plaintext"
        )
    return load_server_tls(Path(value))


# Parse problems by a phrase of protobuf's message, told in our words. Protobuf's own message quotes the line and the
# token it stopped at, which may be a line of the private key: it is never shown.
_PARSE_PROBLEMS = (
    ("String missing ending quote", "a string without its closing quote"),
    ("codec can't decode", "a string with an invalid escape"),
    ("Expected string", "a value that is not a quoted string"),
    ("has no field named", "a field name SSLConfig does not have (server_key, server_cert, custom_ca, client_verify)"),
    ("should not have multiple", "a field given twice"),
    ('Expected "true" or "false"', "client_verify is neither true nor false"),
    ("Expected identifier", "a field name expected"),
    ('Expected ":"', "a colon expected after the field name"),
)


def _parse_error_reason(text: str, error: text_format.ParseError) -> str:
    """Where the parse stopped and what protobuf found wrong there, without quoting the file."""
    if text.startswith("\ufeff"):
        return "line 1, column 1: a UTF-8 byte order mark (BOM); save the file without it"
    message = str(error)
    problem = next((reason for phrase, reason in _PARSE_PROBLEMS if phrase in message), "invalid syntax")
    line, column = error.GetLine(), error.GetColumn()
    if line is None:
        return problem
    return f"line {line}, column {column}: {problem}" if column is not None else f"line {line}: {problem}"


def _field_error(path: Path, field: str, reason: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{FLAG} {path}: {field} {reason}")


def load_server_tls(path: Path) -> ServerTls:
    """Reads and checks an SSLConfig file; InvalidArgumentError naming the flag and the field when anything is wrong."""
    text = read_flag_file(FLAG, path)
    config = ssl_config_pb2.SSLConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        reason = _parse_error_reason(text, error)
        raise InvalidArgumentError(f"{FLAG} {path}: not a text-format tensorflow.serving.SSLConfig: {reason}") from None
    if not config.server_key.strip():
        raise _field_error(path, "server_key", "is missing: the server's PEM private key is required")
    if not config.server_cert.strip():
        raise _field_error(path, "server_cert", "is missing: the server's PEM certificate is required")
    custom_ca = config.custom_ca if config.custom_ca.strip() else None
    checks = [("server_key", check_private_key_pem), ("server_cert", check_certificates_pem)]
    if custom_ca is not None:
        checks.append(("custom_ca", check_certificates_pem))
    for field, check in checks:
        try:
            check(getattr(config, field))
        except ValueError as error:
            raise _field_error(path, field, str(error)) from None
    try:
        check_key_pair(config.server_key, config.server_cert)
    except ValueError as error:
        raise _field_error(path, "server_key", str(error)) from None
    if config.client_verify and custom_ca is None:
        raise _field_error(
            path,
            "client_verify",
            "is true but custom_ca is empty: give the PEM certificates that client certificates must chain to",
        )
    return ServerTls(
        source=path,
        server_key=config.server_key,
        server_cert=config.server_cert,
        custom_ca=custom_ca,
        client_verify=config.client_verify,
    )
