"""The proxy's ``--monitoring_config_file`` and ``--rest_api_enable_cors_support``, as real processes (two PS, an
entry, proxies in front): its REST port serves the proxy's own registry (``proxy_*``, the one its /metrics serves) at
the configured path, TF Serving's default one here, while REST Predicts answer as before; with CORS on, API answers
carry tensorflow_model_server's CORS headers and OPTIONS is a preflight; a proxy without the flags adds neither."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from http_answers import TF_SERVING_CORS_HEADERS, HttpAnswer, http_answer, prometheus_samples, prometheus_value
from procs import ServerProcess
from proxy_procs import Proxy, start_entry, start_ps_shards
from rest_calls import instances_rows

from monolith_serving.client.inputs import encode_instances, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec

pytestmark = pytest.mark.integration

ROWS = 100
DEFAULT_PATH = "/monitoring/prometheus/metrics"  # tensorflow_model_server's, when the config names no path
PREDICT_PATH = "/v1/models/entry:predict"


class ProxiesOverEntry:
    """Two PS, an entry over them, and two proxies in front of it: ``monitored`` with a MonitoringConfig enabling
    Prometheus at the default path and CORS on, ``plain`` with neither."""

    def __init__(self, root: Path) -> None:
        export = root / "export"
        write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS, version=1, seed=9))
        spec = load_serving_spec(export / "entry" / "1")
        self.body = instances_rows(
            encode_instances(spec, random_examples(spec, 3, np.random.default_rng(2), rows=ROWS))
        )
        monitoring = root / "monitoring.config"
        monitoring.write_text("prometheus_config { enable: true }\n")
        logs = root / "logs"
        self.servers: list[ServerProcess] = []
        try:
            self.servers.extend(start_ps_shards(export, logs))
            entry = start_entry(export, list(self.servers), logs / "entry.log")
            self.servers.append(entry)
            targets = ["--entry_targets", entry.address, "--entry_models", "entry"]
            self.monitored = Proxy(
                logs,
                [*targets, f"--monitoring_config_file={monitoring}", "--rest_api_enable_cors_support"],
                name="proxy-monitored",
            )
            self.servers.append(self.monitored)
            self.monitored.start()
            self.plain = Proxy(logs, targets, name="proxy-plain")
            self.servers.append(self.plain)
            self.plain.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiesOverEntry]:
    running = ProxiesOverEntry(tmp_path_factory.mktemp("proxy-monitoring"))
    try:
        yield running
    finally:
        running.stop()


def _call(proxy: Proxy, method: str, path: str, body: bytes | None = None, **headers: str) -> HttpAnswer:
    return http_answer(proxy.rest_port, method, path, body, {k.replace("_", "-"): v for k, v in headers.items()})


def test_the_rest_port_serves_the_proxys_registry(proxies: ProxiesOverEntry) -> None:
    proxy = proxies.monitored
    rest_predicts = {"method": "Predict", "protocol": "rest", "code": "OK"}

    def page() -> str:
        answer = _call(proxy, "GET", DEFAULT_PATH)
        assert answer.status == 200, answer.text
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert answer.cors_headers() == {}  # not the API's
        return answer.text

    before = prometheus_value(page(), "proxy_requests_total", rest_predicts)
    predict = _call(proxy, "POST", PREDICT_PATH, proxies.body)
    assert predict.status == 200, predict.text
    assert '"predictions"' in predict.text
    text = page()
    assert prometheus_value(text, "proxy_requests_total", rest_predicts) == before + 1
    from_metrics = http_answer(proxy.metrics_port, "GET", "/metrics").text
    assert prometheus_samples(text, "proxy_requests_total") == prometheus_samples(from_metrics, "proxy_requests_total")
    assert _call(proxies.plain, "GET", DEFAULT_PATH).status == 404  # no MonitoringConfig: no such endpoint


def test_with_cors_the_proxys_api_answers_carry_the_headers(proxies: ProxiesOverEntry) -> None:
    proxy = proxies.monitored
    predict = _call(proxy, "POST", PREDICT_PATH, proxies.body, Content_Type="application/json")
    assert predict.status == 200, predict.text
    assert predict.cors_headers() == TF_SERVING_CORS_HEADERS
    status = _call(proxy, "GET", "/v1/models/nope")
    assert status.status == 404 and status.cors_headers() == TF_SERVING_CORS_HEADERS
    preflight = _call(
        proxy, "OPTIONS", PREDICT_PATH, Origin="http://localhost:3000", Access_Control_Request_Method="POST"
    )
    assert (preflight.status, preflight.text) == (200, "")
    assert preflight.cors_headers() == TF_SERVING_CORS_HEADERS
    refused = _call(proxy, "OPTIONS", PREDICT_PATH)
    assert refused.status == 400 and refused.cors_headers() == TF_SERVING_CORS_HEADERS
    preflights = {"model": "unknown", "method": "preflight", "protocol": "rest", "code": "OK"}
    assert proxy.metric("proxy_requests_total", preflights) >= 1


def test_without_cors_the_proxy_adds_no_header(proxies: ProxiesOverEntry) -> None:
    proxy = proxies.plain
    predict = _call(proxy, "POST", PREDICT_PATH, proxies.body, Origin="http://localhost:3000")
    assert predict.status == 200, predict.text
    assert predict.cors_headers() == {}
    preflight = _call(proxy, "OPTIONS", PREDICT_PATH, Origin="http://localhost:3000")
    assert (preflight.status, preflight.headers["Allow"], preflight.cors_headers()) == (405, "GET, POST", {})
