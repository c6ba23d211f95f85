"""Whole HTTP answers (status, headers, body) from a server's REST port on loopback, and its Prometheus text read
back, for the tests of what the REST port serves besides the API's JSON (``--monitoring_config_file``,
``--rest_api_enable_cors_support``)."""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

CORS_HEADER_NAMES = ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Allow-Headers")
# tensorflow_model_server's (model_servers/http_rest_api_util.cc AddCORSHeaders).
TF_SERVING_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: http.client.HTTPMessage
    text: str

    def cors_headers(self) -> dict[str, str]:
        """The CORS headers the answer carries (none: empty)."""
        return {name: value for name in CORS_HEADER_NAMES if (value := self.headers.get(name)) is not None}


def http_answer(
    port: int, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> HttpAnswer:
    """One request to ``127.0.0.1:port``, its path sent as given."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return HttpAnswer(response.status, response.headers, response.read().decode())
    finally:
        connection.close()


def prometheus_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` in Prometheus text, as (labels, value)."""
    return [
        (dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def prometheus_value(text: str, name: str, labels: Mapping[str, str]) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        value
        for sample_labels, value in prometheus_samples(text, name)
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )
