"""The manager's HTTP port: ``GET /metrics`` (Prometheus), ``GET /status`` (JSON), ``POST /rollback``.

``POST /rollback?model=M&version=V`` queues a rollback on the manager's loop and answers with the rollout
record once it finished (200 when it succeeded, 409 when it was aborted). A rollback that could not start
answers ``{"error": message}`` with the status of its error (``http_status_for``): 404 for an unknown model
or a version not on disk, 503 while discovery is unreachable (its state could not be written), 409 when the
version cannot be rolled out (e.g. no readable serving spec), 400 for a bad argument; 504 when the outcome
is not known within the timeout. Requests are served on daemon threads; they only read the manager's
published snapshot or hand work to its loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monolith_serving.core.errors import MonolithServingError
from monolith_serving.core.grpc_errors import status_code_for
from monolith_serving.model_manager.manager import ModelManager
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.rollout import Outcome
from monolith_serving.model_manager.status import record_json

logger = logging.getLogger(__name__)

# By the error's gRPC code (``core.grpc_errors``, the one place package errors are classified).
_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNAVAILABLE: 503,  # retrying later may help
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status_for(error: MonolithServingError) -> int:
    """The HTTP status answering a request that failed with ``error`` (500 for any other package error)."""
    return _HTTP_STATUS.get(status_code_for(error), 500)


class StatusEndpoint:
    def __init__(
        self, manager: ModelManager, metrics: ModelManagerMetrics, *, host: str, port: int, rollback_timeout_s: float
    ) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("http %s", format % args)

            def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, value: Any) -> None:
                self._send(code, json.dumps(value, indent=2, sort_keys=True).encode() + b"\n")

            def do_GET(self) -> None:
                path = urlparse(self.path).path
                if path == "/metrics":
                    self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/status":
                    self._json(200, manager.snapshot())
                else:
                    self._json(404, {"error": f"no such path {path!r}; try /status or /metrics"})

            def do_POST(self) -> None:
                url = urlparse(self.path)
                if url.path != "/rollback":
                    self._json(404, {"error": f"no such path {url.path!r}"})
                    return
                query = parse_qs(url.query)
                model = query.get("model", [""])[0]
                version_text = query.get("version", [""])[0]
                if not model or not version_text.isdigit():
                    self._json(400, {"error": "give ?model=NAME&version=N"})
                    return
                code, value = endpoint.rollback(model, int(version_text))
                self._json(code, value)

        self._manager = manager
        self._rollback_timeout_s = rollback_timeout_s
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="model-manager-http", daemon=True)

    def rollback(self, model: str, version: int) -> tuple[int, dict[str, Any]]:
        loop = self._manager.loop
        if loop is None:
            return 503, {"error": "manager not running yet"}
        future = asyncio.run_coroutine_threadsafe(self._manager.request_rollback(model, version), loop)
        try:
            record = future.result(self._rollback_timeout_s)
        except TimeoutError:
            return 504, {"error": f"rollback still running after {self._rollback_timeout_s} s; see /status"}
        except MonolithServingError as error:
            logger.warning("rollback of %s to version %d refused: %s", model, version, error.message)
            return http_status_for(error), {"error": error.message}
        except Exception as error:  # a bug: the client still gets an answer, the log the traceback
            logger.exception("rollback of %s to version %d failed", model, version)
            return 500, {"error": f"internal error: {error!r}"}
        body = record_json(record) or {}
        return (200 if record.outcome is Outcome.SUCCEEDED else 409), body

    def start(self) -> None:
        self._thread.start()
        logger.info("model-manager status on http://%s:%d/status", *self._server.server_address[:2])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
