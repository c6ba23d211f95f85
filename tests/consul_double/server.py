"""An in-process HTTP double of the Consul API subset monolith-serving uses.

Implements, with Consul's wire behaviour (JSON shapes, base64 ``Value``, ``X-Consul-Index``,
``ModifyIndex``/``LockIndex``, blocking queries with ``?index``/``wait``):

- KV: GET (single, ``recurse``, ``keys`` + ``separator``), PUT (``cas``, ``acquire``, ``release``,
  ``flags``), DELETE (``recurse``, ``cas``).
- Sessions: create (``TTL`` 10s..24h, ``Behavior`` release|delete, ``LockDelay``), renew, destroy, info,
  list. A TTL session is invalidated twice the TTL after its last renewal, as Consul does; invalidation releases
  or deletes the keys it holds and applies the lock delay to them.
- Agent services: register (with a ``Check``/``Checks`` TTL check; initial status critical unless
  ``Status`` given), deregister; TTL checks: pass/warn/fail/update; a TTL check not updated in time
  turns critical. Health: ``/v1/health/service/<name>`` with ``passing`` and blocking queries.

Time is read from an injectable clock so tests can make TTLs expire without waiting.
Not a general Consul: ACLs, datacenters, consistency modes, and everything else are ignored.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DEFAULT_WAIT_S = 300.0
_MAX_WAIT_S = 600.0
_SESSION_TTL_MULTIPLIER = 2  # Consul waits up to twice the TTL before invalidating a session
NODE_NAME = "consul-double"


def parse_duration(text: str) -> float:
    """Go duration ("10s", "150ms", "1m30s") or a bare number of seconds."""
    text = text.strip()
    if not text:
        return 0.0
    if re.fullmatch(r"[\d.]+", text):
        return float(text)
    parts = re.findall(r"([\d.]+)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _lower_keys(obj: Any) -> Any:
    """Consul decodes JSON field names case-insensitively; normalise to lower case."""
    if isinstance(obj, dict):
        return {str(k).lower(): v for k, v in obj.items()}
    return obj


@dataclass
class _KvEntry:
    key: str
    value: bytes | None
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0
    session: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": base64.b64encode(self.value).decode() if self.value is not None else None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        if self.session:
            out["Session"] = self.session
        return out


@dataclass
class _Session:
    id: str
    name: str
    ttl_s: float
    behavior: str
    lock_delay_s: float
    create_index: int
    deadline: float | None  # clock time of invalidation (TTL sessions only)

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": NODE_NAME,
            "LockDelay": int(self.lock_delay_s * 1e9),
            "Behavior": self.behavior,
            "TTL": f"{self.ttl_s:g}s" if self.ttl_s else "",
            "NodeChecks": ["serfHealth"],
            "ServiceChecks": None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.create_index,
        }


@dataclass
class _Check:
    check_id: str
    name: str
    service_id: str
    service_name: str
    ttl_s: float | None
    status: str
    output: str = ""
    deadline: float | None = None


@dataclass
class _Service:
    id: str
    name: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    checks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": self.tags,
            "Address": self.address,
            "Meta": self.meta,
            "Port": self.port,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
        }


class _ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ConsulState:
    """The store; every public method holds the lock. Thread-safe."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._index = 1  # Raft index; never 0 in responses
        self._kv_index = 1
        self._health_index = 1
        self._kv: dict[str, _KvEntry] = {}
        self._lock_delays: dict[str, float] = {}
        self._sessions: dict[str, _Session] = {}
        self._services: dict[str, _Service] = {}
        self._checks: dict[str, _Check] = {}

    # ---- time-driven changes ---------------------------------------------------------------------------
    def expire(self) -> None:
        """Invalidate sessions and fail TTL checks whose deadline passed (called periodically)."""
        with self._cond:
            now = self._clock()
            for session in list(self._sessions.values()):
                if session.deadline is not None and now >= session.deadline:
                    self._invalidate(session)
            for check in self._checks.values():
                if check.deadline is not None and now >= check.deadline and check.status != "critical":
                    check.status = "critical"
                    check.output = "TTL expired"
                    check.deadline = None
                    self._bump_health()

    def _bump(self) -> int:
        self._index += 1
        return self._index

    def _bump_kv(self) -> int:
        self._kv_index = self._bump()
        self._cond.notify_all()
        return self._kv_index

    def _bump_health(self) -> None:
        self._health_index = self._bump()
        self._cond.notify_all()

    def _block(self, index_of: Callable[[], int], min_index: int, wait_s: float) -> None:
        deadline = time.monotonic() + min(wait_s, _MAX_WAIT_S)
        while index_of() <= min_index:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(min(remaining, 0.1))  # also wake to let expire() run its effects

    # ---- KV --------------------------------------------------------------------------------------------
    def kv_get(
        self, key: str, *, recurse: bool, keys: bool, separator: str | None, index: int, wait_s: float
    ) -> tuple[int, Any]:
        with self._cond:
            if index > 0:
                self._block(lambda: self._kv_index, index, wait_s)
            idx = self._kv_index
            if keys:
                found: set[str] = set()
                for k in self._kv:
                    if not k.startswith(key):
                        continue
                    if separator:
                        cut = k.find(separator, len(key))
                        found.add(k if cut < 0 else k[: cut + len(separator)])
                    else:
                        found.add(k)
                return idx, sorted(found) or None
            if recurse:
                entries = [self._kv[k].to_json() for k in sorted(self._kv) if k.startswith(key)]
                return idx, entries or None
            entry = self._kv.get(key)
            return idx, [entry.to_json()] if entry else None

    def kv_put(
        self,
        key: str,
        value: bytes,
        *,
        flags: int,
        cas: int | None,
        acquire: str | None,
        release: str | None,
    ) -> bool:
        with self._cond:
            entry = self._kv.get(key)
            if cas is not None:
                if cas == 0 and entry is not None:
                    return False
                if cas != 0 and (entry is None or entry.modify_index != cas):
                    return False
            if acquire is not None:
                if acquire not in self._sessions:
                    raise _ApiError(500, f"invalid session {acquire!r}")
                if entry is not None and entry.session not in (None, acquire):
                    return False
                if (entry is None or entry.session is None) and self._lock_delays.get(key, 0) > self._clock():
                    return False
            if release is not None and (entry is None or entry.session != release):
                return False
            idx = self._bump_kv()
            if entry is None:
                entry = _KvEntry(key=key, value=value, flags=flags, create_index=idx, modify_index=idx)
                self._kv[key] = entry
            entry.value = value
            entry.flags = flags
            entry.modify_index = idx
            if acquire is not None and entry.session is None:
                entry.session = acquire
                entry.lock_index += 1
            if release is not None:
                entry.session = None
            return True

    def kv_delete(self, key: str, *, recurse: bool, cas: int | None) -> bool:
        with self._cond:
            if recurse:
                doomed = [k for k in self._kv if k.startswith(key)]
            else:
                entry = self._kv.get(key)
                if cas is not None and (entry is None or cas == 0 or entry.modify_index != cas):
                    return False
                doomed = [key] if entry else []
            for k in doomed:
                del self._kv[k]
            self._bump_kv()  # Consul bumps the index (tombstone) even for a missing key
            return True

    # ---- sessions --------------------------------------------------------------------------------------
    def session_create(self, body: dict[str, Any]) -> str:
        with self._cond:
            ttl_s = parse_duration(str(body.get("ttl") or ""))
            if ttl_s and not 10 <= ttl_s <= 86400:
                raise _ApiError(400, f"Invalid Session TTL '{body.get('ttl')}', must be between [10s=24h0m0s]")
            behavior = str(body.get("behavior") or "release")
            if behavior not in ("release", "delete"):
                raise _ApiError(400, f"Invalid Behavior setting '{behavior}'")
            delay = body.get("lockdelay", "15s")
            # Consul accepts a Go duration string or a number of nanoseconds.
            lock_delay_s = parse_duration(delay) if isinstance(delay, str) else float(delay) / 1e9
            session = _Session(
                id=str(uuid.uuid4()),
                name=str(body.get("name") or ""),
                ttl_s=ttl_s,
                behavior=behavior,
                lock_delay_s=lock_delay_s,
                create_index=self._bump(),
                deadline=self._clock() + ttl_s * _SESSION_TTL_MULTIPLIER if ttl_s else None,
            )
            self._sessions[session.id] = session
            return session.id

    def session_renew(self, session_id: str) -> dict[str, Any] | None:
        with self._cond:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.ttl_s:
                session.deadline = self._clock() + session.ttl_s * _SESSION_TTL_MULTIPLIER
            return session.to_json()

    def session_destroy(self, session_id: str) -> None:
        with self._cond:
            session = self._sessions.get(session_id)
            if session is not None:
                self._invalidate(session)

    def session_info(self, session_id: str) -> list[dict[str, Any]]:
        with self._cond:
            session = self._sessions.get(session_id)
            return [session.to_json()] if session else []

    def session_list(self) -> list[dict[str, Any]]:
        with self._cond:
            return [s.to_json() for s in self._sessions.values()]

    def _invalidate(self, session: _Session) -> None:
        del self._sessions[session.id]
        held = [e for e in self._kv.values() if e.session == session.id]
        for entry in held:
            if session.lock_delay_s:
                self._lock_delays[entry.key] = self._clock() + session.lock_delay_s
            if session.behavior == "delete":
                del self._kv[entry.key]
            else:
                entry.session = None
        self._bump_kv()

    # ---- agent services and health ---------------------------------------------------------------------
    def service_register(self, body: dict[str, Any]) -> None:
        with self._cond:
            name = body.get("name")
            if not name:
                raise _ApiError(400, "Missing service name")
            service_id = str(body.get("id") or name)
            self._drop_service(service_id)
            service = _Service(
                id=service_id,
                name=str(name),
                address=str(body.get("address") or ""),
                port=int(body.get("port") or 0),
                tags=list(body.get("tags") or []),
                meta=dict(body.get("meta") or {}),
            )
            specs = [body["check"]] if body.get("check") else []
            specs += list(body.get("checks") or [])
            for n, spec in enumerate(specs, start=1):
                spec = _lower_keys(spec)
                check_id = str(spec.get("checkid") or spec.get("id") or "")
                if not check_id:
                    check_id = f"service:{service_id}" if len(specs) == 1 else f"service:{service_id}:{n}"
                ttl_s = parse_duration(str(spec["ttl"])) if spec.get("ttl") else None
                status = str(spec.get("status") or "critical")
                self._checks[check_id] = _Check(
                    check_id=check_id,
                    name=str(spec.get("name") or f"Service '{name}' check"),
                    service_id=service_id,
                    service_name=service.name,
                    ttl_s=ttl_s,
                    status=status,
                    deadline=self._clock() + ttl_s if ttl_s and status != "critical" else None,
                )
                service.checks.append(check_id)
            self._services[service_id] = service
            self._bump_health()

    def service_deregister(self, service_id: str) -> bool:
        with self._cond:
            if service_id not in self._services:
                return False
            self._drop_service(service_id)
            self._bump_health()
            return True

    def _drop_service(self, service_id: str) -> None:
        old = self._services.pop(service_id, None)
        for check_id in old.checks if old else []:
            self._checks.pop(check_id, None)

    def check_update(self, check_id: str, status: str, output: str) -> bool:
        with self._cond:
            check = self._checks.get(check_id)
            if check is None:
                return False
            check.status = status
            check.output = output
            check.deadline = self._clock() + check.ttl_s if check.ttl_s else None
            self._bump_health()
            return True

    def health_service(self, name: str, *, passing: bool, index: int, wait_s: float) -> tuple[int, Any]:
        with self._cond:
            if index > 0:
                self._block(lambda: self._health_index, index, wait_s)
            out = []
            for service in sorted(self._services.values(), key=lambda s: s.id):
                if service.name != name:
                    continue
                checks = [self._serf_check()] + [self._check_json(self._checks[c]) for c in service.checks]
                if passing and any(c["Status"] != "passing" for c in checks):
                    continue
                out.append(
                    {
                        "Node": {
                            "ID": str(uuid.UUID(int=0)),
                            "Node": NODE_NAME,
                            "Address": "127.0.0.1",
                            "Datacenter": "dc1",
                        },
                        "Service": service.to_json(),
                        "Checks": checks,
                    }
                )
            return self._health_index, out

    @staticmethod
    def _serf_check() -> dict[str, Any]:
        return {
            "Node": NODE_NAME,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
        }

    @staticmethod
    def _check_json(check: _Check) -> dict[str, Any]:
        return {
            "Node": NODE_NAME,
            "CheckID": check.check_id,
            "Name": check.name,
            "Status": check.status,
            "Output": check.output,
            "ServiceID": check.service_id,
            "ServiceName": check.service_name,
            "Type": "ttl" if check.ttl_s else "",
        }


class _Handler(BaseHTTPRequestHandler):
    server: _DoubleHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        state = self.server.state
        state.expire()
        try:
            self._route(method, path, query, body, state)
        except _ApiError as exc:
            self._send(exc.code, exc.message.encode(), content_type="text/plain")
        except ValueError as exc:
            self._send(400, str(exc).encode(), content_type="text/plain")

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes, state: ConsulState) -> None:
        index = int(query.get("index") or 0)
        wait_s = parse_duration(query["wait"]) if query.get("wait") else _DEFAULT_WAIT_S
        if path.startswith("/v1/kv/"):
            key = path[len("/v1/kv/") :]
            if method == "GET":
                idx, result = state.kv_get(
                    key,
                    recurse="recurse" in query,
                    keys="keys" in query,
                    separator=query.get("separator"),
                    index=index,
                    wait_s=wait_s,
                )
                if result is None:
                    self._send(404, b"", index=idx)
                else:
                    self._json(result, index=idx)
                return
            if method == "PUT":
                ok = state.kv_put(
                    key,
                    body,
                    flags=int(query.get("flags") or 0),
                    cas=int(query["cas"]) if "cas" in query else None,
                    acquire=query.get("acquire"),
                    release=query.get("release"),
                )
                self._json(ok)
                return
            if method == "DELETE":
                cas = int(query["cas"]) if "cas" in query else None
                self._json(state.kv_delete(key, recurse="recurse" in query, cas=cas))
                return
        if path == "/v1/session/create" and method == "PUT":
            parsed = json.loads(body) if body.strip() else {}
            self._json({"ID": state.session_create(_lower_keys(parsed))})
            return
        if path.startswith("/v1/session/renew/") and method == "PUT":
            session_id = path.rsplit("/", 1)[1]
            renewed = state.session_renew(session_id)
            if renewed is None:
                self._send(404, f"Session id '{session_id}' not found".encode(), content_type="text/plain")
            else:
                self._json([renewed])
            return
        if path.startswith("/v1/session/destroy/") and method == "PUT":
            state.session_destroy(path.rsplit("/", 1)[1])
            self._json(True)
            return
        if path.startswith("/v1/session/info/") and method == "GET":
            self._json(state.session_info(path.rsplit("/", 1)[1]), index=1)
            return
        if path == "/v1/session/list" and method == "GET":
            self._json(state.session_list(), index=1)
            return
        if path == "/v1/agent/service/register" and method == "PUT":
            state.service_register(_lower_keys(json.loads(body or b"{}")))
            self._send(200, b"")
            return
        if path.startswith("/v1/agent/service/deregister/") and method == "PUT":
            service_id = path.rsplit("/", 1)[1]
            if not state.service_deregister(service_id):
                raise _ApiError(404, f'Unknown service ID "{service_id}". Ensure that the service ID is passed')
            self._send(200, b"")
            return
        match = re.fullmatch(r"/v1/agent/check/(pass|warn|fail|update)/(.+)", path)
        if match and method == "PUT":
            verb, check_id = match.groups()
            if verb == "update":
                update = _lower_keys(json.loads(body or b"{}"))
                status, output = str(update.get("status") or ""), str(update.get("output") or "")
                if status not in ("passing", "warning", "critical"):
                    raise _ApiError(400, f"Invalid check status: {status!r}")
            else:
                status = {"pass": "passing", "warn": "warning", "fail": "critical"}[verb]
                output = query.get("note", "")
            if not state.check_update(check_id, status, output):
                raise _ApiError(404, f'Unknown check ID "{check_id}"')
            self._send(200, b"")
            return
        if path.startswith("/v1/health/service/") and method == "GET":
            idx, result = state.health_service(
                path.rsplit("/", 1)[1], passing="passing" in query, index=index, wait_s=wait_s
            )
            self._json(result, index=idx)
            return
        self._send(404, f"unsupported by the Consul double: {method} {path}".encode(), content_type="text/plain")

    def _json(self, obj: Any, index: int | None = None) -> None:
        self._send(200, json.dumps(obj).encode(), index=index)

    def _send(
        self, code: int, payload: bytes, *, index: int | None = None, content_type: str = "application/json"
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if index is not None:
            self.send_header("X-Consul-Index", str(index))
            self.send_header("X-Consul-KnownLeader", "true")
            self.send_header("X-Consul-LastContact", "0")
        self.end_headers()
        self.wfile.write(payload)


class _DoubleHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: ConsulState) -> None:
        super().__init__(address, _Handler)
        self.state = state


class ConsulDouble:
    """Start with ``start()`` (or ``with``); ``address`` is ``127.0.0.1:<port>`` (CONSUL_HTTP_ADDR form)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = ConsulState(clock)
        self._server: _DoubleHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def address(self) -> str:
        if self._server is None:
            raise RuntimeError("ConsulDouble not started")
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        if self._server is not None:
            return
        self._stopping.clear()
        self._server = _DoubleHTTPServer(("127.0.0.1", 0), self.state)
        serve = threading.Thread(target=self._server.serve_forever, name="consul-double", daemon=True)
        reap = threading.Thread(target=self._reap, name="consul-double-ttl", daemon=True)
        self._threads = [serve, reap]
        for thread in self._threads:
            thread.start()

    def _reap(self) -> None:
        while not self._stopping.wait(0.05):
            self.state.expire()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> ConsulDouble:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
