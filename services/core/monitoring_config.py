"""tensorflow_model_server's ``--monitoring_config_file``: the server's Prometheus metrics on its REST port.

The file is a text-format ``tensorflow.serving.MonitoringConfig``
(``protos/tensorflow_serving/config/monitoring_config.proto``). With ``prometheus_config { enable: true }`` the REST
port answers ``GET <path>`` with the server's metrics, the registry its ``--metrics_port`` serves at /metrics; an
empty ``path`` is TF Serving's default, ``/monitoring/prometheus/metrics``. Without ``enable`` nothing is served.

The file is read once, at start; anything wrong is an ``InvalidArgumentError`` naming the flag (exit 2): a file that
cannot be read or is not a MonitoringConfig, and, when enabled, a path a request could never reach or one the REST
API answers itself (under ``/v1/``). TF Serving takes any path and lets the metrics shadow an API path.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import text_format

from monolith_serving.core.cli_flags import read_flag_file
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.proto_gen.tensorflow_serving.config import monitoring_config_pb2

FLAG = "--monitoring_config_file"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's, for an empty path
_API_PREFIX = "/v1/"  # every path under it is the REST API's (rest_gateway), in any case
# A path as a client sends it: RFC 3986's path characters, and '%' only in an escape. Compared with the request's
# raw path as it is, so a character a client must escape (a space, '?', '#', non-ASCII) would never match.
_URL_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")


def read_monitoring_config(path: Path) -> monitoring_config_pb2.MonitoringConfig:
    """The parsed file; InvalidArgumentError naming the flag and the file when it cannot be read or parsed."""
    text = read_flag_file(FLAG, path)
    config = monitoring_config_pb2.MonitoringConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise InvalidArgumentError(
            f"{FLAG} {path}: not a text-format tensorflow.serving.MonitoringConfig: {error}"
        ) from None
    return config


def check_prometheus_path(path: str, source: Path) -> None:
    """InvalidArgumentError naming the field when no request could reach ``path`` or the REST API owns it."""
    field = f"{FLAG} {source}: prometheus_config.path {path!r}"
    if not path.startswith("/"):
        raise InvalidArgumentError(f"{field} must start with '/' (a URL path such as {DEFAULT_PROMETHEUS_PATH})")
    if not _URL_PATH.fullmatch(path):
        raise InvalidArgumentError(
            f"{field} holds a character a URL path carries only percent-escaped (a space, '?', '#', non-ASCII, "
            "a '%' not starting an escape): write it as clients send it"
        )
    if any(segment in (".", "..") for segment in path.split("/")):
        raise InvalidArgumentError(
            f"{field} holds a '.' or '..' segment, which HTTP clients resolve away before asking"
        )
    if path[: len(_API_PREFIX)].lower() == _API_PREFIX:
        raise InvalidArgumentError(
            f"{field} is under {_API_PREFIX}, where every path belongs to the REST API: choose one outside it"
        )


def prometheus_path_from_file(value: str) -> str | None:
    """The path the REST port serves the metrics at, from the flag's value; None when the flag is empty (TF
    Serving's default) or the file does not enable Prometheus."""
    if not value:
        return None
    source = Path(value)
    prometheus = read_monitoring_config(source).prometheus_config
    if not prometheus.enable:
        return None
    path = prometheus.path or DEFAULT_PROMETHEUS_PATH
    check_prometheus_path(path, source)
    return path
