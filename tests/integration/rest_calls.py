"""HTTP calls to a server's REST API (TF Serving's) and /metrics on loopback, and the REST bodies of Predicts of
serialized Instances, for the proxy's and the model servers' REST tests."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any


def rest_text(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    """One HTTP call to ``127.0.0.1:port``; (status, body as text, numbers as written)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def rest_json(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """``rest_text`` with the body parsed as JSON."""
    status, text = rest_text(port, method, path, body)
    return status, json.loads(text)


def b64_values(blobs: list[bytes], *, padded: bool = True) -> list[dict[str, str]]:
    """Each blob as TF Serving's JSON of bytes, ``{"b64": ...}`` (its padding dropped unless ``padded``)."""
    values = [base64.b64encode(blob).decode() for blob in blobs]
    return [{"b64": value if padded else value.rstrip("=")} for value in values]


def instances_rows(blobs: list[bytes], *, padded: bool = True) -> bytes:
    """A row-format Predict body: one example per serialized Instance, under the input name ``instances``."""
    return json.dumps({"instances": [{"instances": value} for value in b64_values(blobs, padded=padded)]}).encode()


def instances_columns(blobs: list[bytes]) -> bytes:
    """A columnar Predict body: the serialized Instances as the one tensor of input ``instances``."""
    return json.dumps({"inputs": {"instances": b64_values(blobs)}}).encode()


def metric_samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` on ``127.0.0.1:port/metrics``, as (labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [
        (dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def metric_value(port: int, name: str, labels: dict[str, str] | None = None) -> float:
    """The first sample of ``name`` whose labels include ``labels`` (0 when absent)."""
    for sample_labels, value in metric_samples(port, name):
        if all(sample_labels.get(k) == v for k, v in (labels or {}).items()):
            return value
    return 0.0
