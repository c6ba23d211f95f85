"""tensorflow_model_server's ``--monitoring_config_file`` and ``--rest_api_enable_cors_support`` on real entry and
unified processes (two PS processes behind the entries): with ``prometheus_config { enable: true }`` the REST port
answers GET of the configured path (TF Serving's default path when none is given) with the server's own Prometheus
registry, the one its /metrics serves, while the REST API answers as before; the page is no API request. With CORS
on, every answer under /v1/ carries tensorflow_model_server's CORS headers and OPTIONS is a preflight (200 with a
web origin, 400 without); with it off, no CORS header and OPTIONS is 405."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from http_answers import TF_SERVING_CORS_HEADERS, HttpAnswer, http_answer, prometheus_samples, prometheus_value
from procs import ServerProcess, free_port
from proxy_procs import start_entry, start_ps_shards
from rest_calls import instances_rows

from monolith_serving.client.inputs import encode_instances, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec

pytestmark = pytest.mark.integration

ROWS = 100
CUSTOM_PATH = "/custom/prometheus"
DEFAULT_PATH = "/monitoring/prometheus/metrics"  # tensorflow_model_server's, when the config names no path
PREDICT_PATH = "/v1/models/entry:predict"


class RestPort:
    """A server's REST and /metrics ports."""

    def __init__(self, server: ServerProcess, rest_port: int, metrics_port: int) -> None:
        self.server = server
        self.rest_port = rest_port
        self.metrics_port = metrics_port

    def call(self, method: str, path: str, body: bytes | None = None, **headers: str) -> HttpAnswer:
        return http_answer(self.rest_port, method, path, body, {k.replace("_", "-"): v for k, v in headers.items()})

    def slash_metrics(self) -> str:
        return http_answer(self.metrics_port, "GET", "/metrics").text


def _monitoring_file(path: Path, prometheus_path: str | None) -> Path:
    named = "" if prometheus_path is None else f' path: "{prometheus_path}"'
    path.write_text(f"prometheus_config {{\n  enable: true{named}\n}}\n")
    return path


class Entries:
    """A demo export and its two PS processes, with two entries over them: ``cors_on`` serves its metrics at
    ``CUSTOM_PATH`` with CORS on, ``cors_off`` at TF Serving's default path with CORS off."""

    def __init__(self, root: Path) -> None:
        self.export = root / "export"
        write_demo(DemoOptions(out=self.export, num_ps=2, rows=ROWS, version=1, seed=7))
        spec = load_serving_spec(self.export / "entry" / "1")
        self.body = instances_rows(
            encode_instances(spec, random_examples(spec, 4, np.random.default_rng(1), rows=ROWS))
        )
        logs = root / "logs"
        self.ps = start_ps_shards(self.export, logs)
        self.entries: list[ServerProcess] = []
        try:
            self.cors_on = self._entry(
                logs / "entry-cors.log",
                [
                    f"--monitoring_config_file={_monitoring_file(root / 'custom.config', CUSTOM_PATH)}",
                    "--rest_api_enable_cors_support",
                ],
            )
            self.cors_off = self._entry(
                logs / "entry-plain.log",
                [f"--monitoring-config-file={_monitoring_file(root / 'default.config', None)}"],
            )
        except BaseException:
            self.stop()
            raise

    def _entry(self, log_path: Path, extra: list[str]) -> RestPort:
        rest_port, metrics_port = free_port(), free_port()
        flags = ["--host=127.0.0.1", f"--rest_api_port={rest_port}", f"--metrics_port={metrics_port}", *extra]
        entry = start_entry(self.export, self.ps, log_path, flags)
        self.entries.append(entry)
        return RestPort(entry, rest_port, metrics_port)

    def stop(self) -> None:
        for process in (*self.entries, *self.ps):
            process.stop()


@pytest.fixture(scope="module")
def entries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Entries]:
    running = Entries(tmp_path_factory.mktemp("entry-monitoring"))
    try:
        yield running
    finally:
        running.stop()


def _page(server: RestPort, path: str) -> str:
    answer = server.call("GET", path)
    assert answer.status == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4"), answer.headers
    return answer.text


def test_the_rest_port_serves_the_entrys_registry_at_the_configured_path(entries: Entries) -> None:
    server = entries.cors_on
    before = prometheus_value(_page(server, CUSTOM_PATH), "entry_predict_requests_total", {"code": "OK"})
    answer = server.call("POST", PREDICT_PATH, entries.body)
    assert answer.status == 200, answer.text
    assert '"predictions"' in answer.text
    page = _page(server, CUSTOM_PATH)
    assert prometheus_value(page, "entry_predict_requests_total", {"code": "OK"}) == before + 1
    rest_ok = {"method": "Predict", "code": "OK"}
    assert prometheus_value(page, "entry_rest_requests_total", rest_ok) >= 1
    # The registry /metrics serves: the same counts, read back to back with nothing served between.
    slash_metrics = server.slash_metrics()
    for name in ("entry_predict_requests_total", "entry_rest_requests_total"):
        assert prometheus_samples(page, name) == prometheus_samples(slash_metrics, name), name
    assert _page(server, f"{CUSTOM_PATH}?name[]=x")  # the query is not the path, as TF Serving reads it


def test_without_a_path_the_metrics_are_at_tf_servings_default_path(entries: Entries) -> None:
    page = _page(entries.cors_off, DEFAULT_PATH)
    assert prometheus_samples(page, "entry_served_version") == [({}, 1.0)]
    # Exactly the configured path: the other one is no endpoint on either entry.
    assert entries.cors_off.call("GET", CUSTOM_PATH).status == 404
    assert entries.cors_on.call("GET", DEFAULT_PATH).status == 404
    assert entries.cors_on.call("GET", CUSTOM_PATH + "/").status == 404


def test_the_metrics_page_is_no_rest_api_request(entries: Entries) -> None:
    server = entries.cors_on

    def rest_requests() -> float:
        return prometheus_value(server.slash_metrics(), "entry_rest_requests_total", {})

    before = rest_requests()
    _page(server, CUSTOM_PATH)
    head = server.call("HEAD", CUSTOM_PATH)
    assert (head.status, head.text) == (200, "")
    post = server.call("POST", CUSTOM_PATH, b"{}")
    assert (post.status, post.headers["Allow"]) == (405, "GET, HEAD")
    assert rest_requests() == before
    assert server.call("GET", "/v1/models/entry").status == 200  # the API still answers, and is counted
    assert rest_requests() == before + 1


def test_with_cors_every_api_answer_carries_tf_servings_headers(entries: Entries) -> None:
    server = entries.cors_on
    predict = server.call("POST", PREDICT_PATH, entries.body, Content_Type="application/json")
    assert predict.status == 200, predict.text
    assert predict.cors_headers() == TF_SERVING_CORS_HEADERS
    not_found = server.call("POST", "/v1/models/nope:predict", entries.body)
    assert not_found.status == 404 and not_found.cors_headers() == TF_SERVING_CORS_HEADERS
    malformed = server.call("GET", "/v1/nothing")
    assert malformed.status == 400 and malformed.cors_headers() == TF_SERVING_CORS_HEADERS
    # Not the API's: no CORS headers, as in TF Serving (its metrics handler and its 404 add none).
    assert server.call("GET", CUSTOM_PATH).cors_headers() == {}
    outside = server.call("GET", "/v2/anything")
    assert outside.status == 404 and outside.cors_headers() == {}


def test_with_cors_options_is_a_preflight(entries: Entries) -> None:
    server = entries.cors_on

    def preflights(code: str) -> float:
        labels = {"method": "preflight", "code": code}
        return prometheus_value(server.slash_metrics(), "entry_rest_requests_total", labels)

    ok_before, refused_before = preflights("OK"), preflights("FAILED_PRECONDITION")
    preflight = server.call(
        "OPTIONS",
        PREDICT_PATH,
        Origin="https://app.example",
        Access_Control_Request_Method="POST",
        Access_Control_Request_Headers="content-type",
    )
    assert (preflight.status, preflight.text) == (200, "")
    assert preflight.cors_headers() == TF_SERVING_CORS_HEADERS
    for headers in ({}, {"Origin": "null"}, {"Origin": "app.example"}):
        refused = server.call("OPTIONS", PREDICT_PATH, **headers)
        assert refused.status == 400, (headers, refused.text)
        assert "CORS preflight without an Origin header naming an http:// or https:// origin" in refused.text
        assert refused.cors_headers() == TF_SERVING_CORS_HEADERS
    assert (preflights("OK"), preflights("FAILED_PRECONDITION")) == (ok_before + 1, refused_before + 3)
    assert server.call("OPTIONS", "/v2/anything", Origin="http://app.example").status == 404


def test_without_cors_no_header_is_added_and_options_is_not_allowed(entries: Entries) -> None:
    server = entries.cors_off
    predict = server.call("POST", PREDICT_PATH, entries.body, Origin="https://app.example")
    assert predict.status == 200, predict.text
    assert predict.cors_headers() == {}
    preflight = server.call("OPTIONS", PREDICT_PATH, Origin="https://app.example", Access_Control_Request_Method="POST")
    assert (preflight.status, preflight.headers["Allow"]) == (405, "GET, POST")
    assert preflight.cors_headers() == {}


def test_the_unified_server_serves_its_registry_and_cors_too(tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text("model_config_list {}\n")
    rest_port, metrics_port, port = free_port(), free_port(), free_port()
    args = [
        f"--port={port}",
        "--host=127.0.0.1",
        f"--rest_api_port={rest_port}",
        f"--metrics_port={metrics_port}",
        "--agent_address=127.0.0.1:1",  # no entry hosted: nothing asks the agent
        f"--model_config_file={config}",
        f"--monitoring_config_file={_monitoring_file(tmp_path / 'monitoring.config', CUSTOM_PATH)}",
        "--rest_api_enable_cors_support=true",
    ]
    with ServerProcess("unified", args, port=port, log_path=tmp_path / "unified.log") as unified:
        server = RestPort(unified, rest_port, metrics_port)
        status = server.call("GET", "/v1/models/demo:ps_0")
        assert status.status == 404 and status.cors_headers() == TF_SERVING_CORS_HEADERS
        page = _page(server, CUSTOM_PATH)
        labels = {"method": "GetModelStatus", "code": "NOT_FOUND"}
        assert prometheus_value(page, "unified_rest_requests_total", labels) == 1
        assert prometheus_samples(page, "unified_rest_requests_total") == prometheus_samples(
            server.slash_metrics(), "unified_rest_requests_total"
        )
        assert server.call("OPTIONS", "/v1/models/demo:ps_0", Origin="http://app.example").status == 200
