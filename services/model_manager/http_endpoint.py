"""The manager's HTTP port: ``GET /metrics`` (Prometheus), ``GET /status`` (JSON), ``POST /rollback``.

``GET /metrics`` and ``GET /status`` are open (Prometheus and the probes use them). ``POST /rollback`` changes
what production serves, so it is authorized first (``authorize_rollback``): with an admin token
(``--admin_token_file``) it needs ``Authorization: Bearer <token>`` (401 without it, 403 with another token);
without one it is accepted only from a loopback peer (an operator on the manager's host or pod) and refused
with 403 otherwise.

``POST /rollback?model=M&version=V`` (``version``: ASCII digits) queues a rollback on the manager's loop and
answers with the rollout record once it finished (200 when it succeeded, 409 when it was aborted). A rollback
that could not start answers ``{"error": message}`` with the status of its error (``http_status_for``): 404 for
an unknown model or a version not on disk, 503 while discovery is unreachable (its state could not be
written), 409 when the version cannot be rolled out (e.g. no readable serving spec) or another rollback of the
model is pending, 400 for a bad argument; 504 when the outcome is not known within the timeout. Every request
gets an answer: an unexpected error is a 500 (its traceback logged), never a dropped connection.

Requests are served on daemon threads; they only read the manager's published snapshot or hand work to its
loop. A rollback request holds its thread at most ``rollback_timeout_s``; the manager keeps at most one
rollback per model pending, so further ones are answered 409 at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monolith_serving.core.admin_token import bearer_token, token_matches
from monolith_serving.core.errors import InvalidArgumentError, MonolithServingError
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

# A version is an int64 in TF Serving; 18 digits always fit (and ``int()`` never sees a huge string).
_VERSION = re.compile(r"[0-9]{1,18}")
# An idle connection (nothing sent, or a client that stopped reading) frees its thread after this long.
_SOCKET_TIMEOUT_S = 30.0


def http_status_for(error: MonolithServingError) -> int:
    """The HTTP status answering a request that failed with ``error`` (500 for any other package error)."""
    return _HTTP_STATUS.get(status_code_for(error), 500)


def is_loopback_peer(host: str) -> bool:
    """Whether a peer address is loopback: 127.0.0.0/8, ``::1`` or an IPv4-mapped ``::ffff:127.x.y.z``."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def authorize_rollback(admin_token: str | None, authorization: str | None, peer_host: str) -> tuple[int, str] | None:
    """None when the caller may roll back, else the HTTP status and message refusing it.

    With ``admin_token``, the caller must present it (``Authorization: Bearer``) whatever its address: 401 when
    it presents none, 403 when another. Without one, only a loopback peer may (403 otherwise)."""
    if admin_token is None:
        if is_loopback_peer(peer_host):
            return None
        return 403, (
            f"POST /rollback from {peer_host} refused: this manager has no admin token, so it accepts rollbacks "
            "only from loopback (its own host or pod); start it with --admin_token_file FILE and send "
            "'Authorization: Bearer <token>' (model-manager rollback --admin_token_file FILE) to allow other hosts"
        )
    presented = bearer_token(authorization)
    if presented is None:
        return 401, "POST /rollback needs 'Authorization: Bearer <token>' (the manager's --admin_token_file)"
    if not token_matches(presented, admin_token):
        return 403, "POST /rollback refused: wrong admin token"
    return None


def parse_rollback_query(query: str) -> tuple[str, int]:
    """``model`` and ``version`` of ``?model=M&version=V``; InvalidArgumentError naming the bad parameter."""
    params = parse_qs(query)
    model = params.get("model", [""])[0]
    version = params.get("version", [""])[0]
    if not model:
        raise InvalidArgumentError("parameter 'model' is missing; give ?model=NAME&version=N")
    if not _VERSION.fullmatch(version):
        raise InvalidArgumentError(f"parameter 'version' must be 1 to 18 ASCII digits, got {version!r}")
    return model, int(version)


class StatusEndpoint:
    def __init__(
        self,
        manager: ModelManager,
        metrics: ModelManagerMetrics,
        *,
        host: str,
        port: int,
        rollback_timeout_s: float,
        admin_token: str | None = None,
    ) -> None:
        if admin_token is not None and not admin_token:
            raise ValueError("admin_token must be non-empty when given")
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            timeout = _SOCKET_TIMEOUT_S
            responded = False

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("http %s", format % args)

            def _send(
                self,
                code: int,
                body: bytes,
                content_type: str = "application/json",
                headers: dict[str, str] | None = None,
            ) -> None:
                self.responded = True
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, value: Any, headers: dict[str, str] | None = None) -> None:
                self._send(code, json.dumps(value, indent=2, sort_keys=True).encode() + b"\n", headers=headers)

            def _answering(self, handle: Callable[[], None]) -> None:
                """Runs ``handle``; an unexpected error is answered 500 (unless an answer has started)."""
                try:
                    handle()
                except ConnectionError:
                    logger.debug("http %s %s: the client went away", self.command, self.path)
                except Exception as error:
                    logger.exception("http %s %s failed", self.command, self.path)
                    if not self.responded:
                        try:
                            self._json(500, {"error": f"internal error: {type(error).__name__}; see the log"})
                        except OSError:
                            logger.debug("http %s %s: the 500 could not be sent", self.command, self.path)

            def do_GET(self) -> None:
                self._answering(self._get)

            def do_POST(self) -> None:
                self._answering(self._post)

            def _get(self) -> None:
                path = urlparse(self.path).path
                if path == "/metrics":
                    self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/status":
                    self._json(200, manager.snapshot())
                else:
                    self._json(404, {"error": f"no such path {path!r}; try /status or /metrics"})

            def _post(self) -> None:
                url = urlparse(self.path)
                if url.path != "/rollback":
                    self._json(404, {"error": f"no such path {url.path!r}"})
                    return
                peer = str(self.client_address[0])
                refusal = authorize_rollback(admin_token, self.headers.get("Authorization"), peer)
                if refusal is not None:
                    code, message = refusal
                    logger.warning("POST /rollback from %s refused (%d)", peer, code)
                    challenge = {"WWW-Authenticate": 'Bearer realm="model-manager"'} if code == 401 else None
                    self._json(code, {"error": message}, challenge)
                    return
                try:
                    model, version = parse_rollback_query(url.query)
                except InvalidArgumentError as error:
                    self._json(400, {"error": error.message})
                    return
                code, value = endpoint.rollback(model, version)
                self._json(code, value)

        self._manager = manager
        self._rollback_timeout_s = rollback_timeout_s
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="model-manager-http", daemon=True)
        self._admin_token_set = admin_token is not None

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
        host, port = self._server.server_address[:2]
        guard = "with the admin token" if self._admin_token_set else "from loopback only (no --admin_token_file)"
        logger.info("model-manager status on http://%s:%d/status; POST /rollback accepted %s", host, port, guard)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
