"""The manager's HTTP port, over real sockets: every request is answered (an error that keeps a rollback from
running becomes an HTTP status with its message, an unexpected one a 500, never a dropped connection), a bad
``version`` is a 400 naming it, and ``POST /rollback`` is authorized: with an admin token only a caller presenting
it, without one only a loopback peer (the server bound on this host's non-loopback address sees one that is not)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monolith_serving.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MonolithServingError,
    NotFoundError,
    UnavailableError,
)
from monolith_serving.model_manager import main as manager_main
from monolith_serving.model_manager.http_endpoint import StatusEndpoint, authorize_rollback, is_loopback_peer
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.rollout import Outcome, RolloutRecord

TOKEN = "s3cret-t0ken"


class FakeManager:
    """Stands in for ModelManager: records every rollback request and answers it with a succeeded record, or
    fails with ``error`` (as ``_serve_rollbacks`` hands the rollout's exception to the requester)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, error: Exception | None = None) -> None:
        self.loop = loop
        self.error = error
        self.requests: list[tuple[str, int]] = []
        self.snapshot_error: Exception | None = None

    def snapshot(self) -> dict[str, Any]:
        if self.snapshot_error is not None:
            raise self.snapshot_error
        return {"models": {}}

    async def request_rollback(self, model: str, version: int) -> RolloutRecord:
        self.requests.append((model, version))
        if self.error is not None:
            raise self.error
        return RolloutRecord(version, 5, Outcome.SUCCEEDED, "", 1.0, 2.0, rollback=True)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def serve(manager: FakeManager, *, host: str = "127.0.0.1", admin_token: str | None = None) -> StatusEndpoint:
    endpoint = StatusEndpoint(
        manager,  # type: ignore[arg-type]
        ModelManagerMetrics(),
        host=host,
        port=0,
        rollback_timeout_s=10,
        admin_token=admin_token,
    )
    endpoint.start()
    return endpoint


def request(
    port: int,
    path: str,
    *,
    method: str = "POST",
    host: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, http.client.HTTPResponse]:
    """One request over a fresh connection (http.client: no proxy from the environment gets in the way). A server
    that drops the connection raises here (RemoteDisconnected)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path, body=b"" if method == "POST" else None, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return (
            response.status,
            json.loads(body) if response.getheader("Content-Type") == "application/json" else body,
            response,
        )
    finally:
        connection.close()


def post_rollback(port: int, query: str = "model=demo&version=3", **kwargs: Any) -> tuple[int, Any]:
    code, body, _ = request(port, f"/rollback?{query}", **kwargs)
    return code, body


def non_loopback_address() -> str | None:
    """An IPv4 address of this host, not loopback, that a server can bind (a client connecting to it from here
    is seen with that address too); None when there is none (then only the peer check itself is tested)."""
    candidates = set()
    with contextlib.suppress(OSError):
        candidates |= {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for probe in ("192.0.2.1", "10.255.255.255"):  # connect() on UDP sends nothing; it picks the source address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, contextlib.suppress(OSError):
            udp.connect((probe, 9))
            candidates.add(str(udp.getsockname()[0]))
    for address in sorted(candidates):
        if ipaddress.ip_address(address).is_loopback or ipaddress.ip_address(address).is_unspecified:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe_socket:
            try:
                probe_socket.bind((address, 0))
            except OSError:
                continue
        return address
    return None


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnavailableError("zookeeper zk:2181 not connected (suspended)"), 503),
        (FailedPreconditionError("demo version 3: no readable serving spec"), 409),
        (InvalidArgumentError("bad version"), 400),
        (NotFoundError("demo version 3 is not on disk"), 404),
        (MonolithServingError("something else"), 500),
        (RuntimeError("a bug"), 500),
    ],
)
def test_a_rollback_that_cannot_run_is_answered_with_its_status(
    loop: asyncio.AbstractEventLoop, error: Exception, status: int
) -> None:
    endpoint = serve(FakeManager(loop, error))
    try:
        code, body = post_rollback(endpoint.port)
    finally:
        endpoint.stop()
    assert code == status
    assert str(error) in body["error"]


@pytest.mark.parametrize(
    "version",
    [
        "%C2%B2",  # '²': str.isdigit() but int() raises (the old handler dropped the connection)
        "%EF%BC%91",  # fullwidth '1': int() would take it
        "%D9%A3",  # Arabic-Indic '3'
        "-1",
        "%2B1",
        "1.0",
        "%201",
        "1%0A",
        "",
        "9" * 19,
        "9" * 5000,  # int() refuses more than 4300 digits
    ],
)
def test_a_version_that_is_not_ascii_digits_is_400_naming_the_parameter(
    loop: asyncio.AbstractEventLoop, version: str
) -> None:
    manager = FakeManager(loop)
    endpoint = serve(manager)
    try:
        code, body = post_rollback(endpoint.port, f"model=demo&version={version}")
    finally:
        endpoint.stop()
    assert code == 400, body
    assert "'version'" in body["error"] and "ASCII digits" in body["error"]
    assert manager.requests == []


def test_a_missing_model_is_400_naming_the_parameter(loop: asyncio.AbstractEventLoop) -> None:
    endpoint = serve(FakeManager(loop))
    try:
        code, body = post_rollback(endpoint.port, "version=3")
    finally:
        endpoint.stop()
    assert code == 400 and "'model'" in body["error"]


def test_an_unexpected_error_is_answered_500_not_a_dropped_connection(loop: asyncio.AbstractEventLoop) -> None:
    manager = FakeManager(loop)
    manager.snapshot_error = RuntimeError("snapshot broke")
    endpoint = serve(manager)
    try:
        code, body, _ = request(endpoint.port, "/status", method="GET")
        manager.snapshot_error = None
        after, _, _ = request(endpoint.port, "/status", method="GET")
    finally:
        endpoint.stop()
    assert code == 500 and "RuntimeError" in body["error"]
    assert after == 200


def test_with_a_token_a_rollback_needs_it_from_every_peer(loop: asyncio.AbstractEventLoop) -> None:
    manager = FakeManager(loop)
    endpoint = serve(manager, admin_token=TOKEN)
    try:
        missing, missing_body, missing_response = request(endpoint.port, "/rollback?model=demo&version=3")
        basic = post_rollback(endpoint.port, headers={"Authorization": f"Basic {TOKEN}"})
        wrong = post_rollback(endpoint.port, headers={"Authorization": "Bearer s3cret-t0kem"})
        prefix = post_rollback(endpoint.port, headers={"Authorization": f"Bearer {TOKEN[:-1]}"})
        assert manager.requests == []  # loopback alone is not enough once a token is configured
        right = post_rollback(endpoint.port, headers={"Authorization": f"bearer {TOKEN}"})
        status, _, _ = request(endpoint.port, "/status", method="GET")  # GET stays open
        metrics, _, _ = request(endpoint.port, "/metrics", method="GET")
    finally:
        endpoint.stop()
    assert missing == 401 and "Authorization: Bearer" in missing_body["error"]
    assert missing_response.getheader("WWW-Authenticate", "").startswith("Bearer")
    assert basic[0] == 401
    assert wrong[0] == 403 and "wrong admin token" in wrong[1]["error"]
    assert prefix[0] == 403
    assert right == (200, right[1]) and right[1]["outcome"] == "succeeded" and right[1]["rollback"]
    assert manager.requests == [("demo", 3)]
    assert status == 200 and metrics == 200


def test_without_a_token_a_non_loopback_peer_is_refused(loop: asyncio.AbstractEventLoop) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback address to bind; see test_the_peer_check_itself")
    manager = FakeManager(loop)
    endpoint = serve(manager, host=address)
    try:
        code, body = post_rollback(endpoint.port, host=address)
        with_header = post_rollback(endpoint.port, host=address, headers={"Authorization": f"Bearer {TOKEN}"})
        status, _, _ = request(endpoint.port, "/status", method="GET", host=address)
    finally:
        endpoint.stop()
    assert code == 403, body
    assert address in body["error"] and "--admin_token_file" in body["error"] and "loopback" in body["error"]
    assert with_header[0] == 403  # no token configured: nothing a remote caller sends is accepted
    assert manager.requests == []
    assert status == 200  # GET /status stays open


def test_without_a_token_a_loopback_peer_may_roll_back(loop: asyncio.AbstractEventLoop) -> None:
    manager = FakeManager(loop)
    endpoint = serve(manager)
    try:
        code, body = post_rollback(endpoint.port, "model=demo&version=0003")
    finally:
        endpoint.stop()
    assert code == 200 and body["version"] == 3
    assert manager.requests == [("demo", 3)]


def test_the_peer_check_itself() -> None:
    for loopback in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
        assert is_loopback_peer(loopback), loopback
    for other in ("192.0.2.2", "10.0.0.1", "::ffff:10.0.0.1", "fe80::1%eth0", "0.0.0.0", "", "localhost"):
        assert not is_loopback_peer(other), other
    assert authorize_rollback(None, None, "127.0.0.1") is None
    refused = authorize_rollback(None, f"Bearer {TOKEN}", "10.1.2.3")
    assert refused is not None and refused[0] == 403 and "--admin_token_file" in refused[1]
    assert authorize_rollback(TOKEN, f"Bearer {TOKEN}", "10.1.2.3") is None
    missing = authorize_rollback(TOKEN, None, "127.0.0.1")
    assert missing is not None and missing[0] == 401
    assert authorize_rollback(TOKEN, "", "::1") == authorize_rollback(TOKEN, "Bearer ", "::1") == missing
    assert authorize_rollback(TOKEN, "Bearer x", "127.0.0.1") == (403, "POST /rollback refused: wrong admin token")


def rollback_args(port: int, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    manager_main.configure(parser)
    return parser.parse_args(["rollback", "--model", "demo", "--to", "3", "--manager", f"127.0.0.1:{port}", *extra])


def test_the_rollback_command_sends_the_token_from_its_file(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")  # as a mounted Secret or `echo` writes it
    manager = FakeManager(loop)
    endpoint = serve(manager, admin_token=TOKEN)
    try:
        without = manager_main.run(rollback_args(endpoint.port))
        refused = capsys.readouterr().out
        with_token = manager_main.run(rollback_args(endpoint.port, "--admin_token_file", str(token_file)))
        accepted = json.loads(capsys.readouterr().out)
    finally:
        endpoint.stop()
    assert without == 1 and "Authorization: Bearer" in refused
    assert with_token == 0 and accepted["outcome"] == "succeeded"
    assert manager.requests == [("demo", 3)]


def test_an_empty_or_missing_token_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    assert manager_main.run(rollback_args(1, "--admin_token_file", str(empty))) == 2
    assert "is empty" in capsys.readouterr().err
    assert manager_main.run(rollback_args(1, "--admin_token_file", str(tmp_path / "absent"))) == 2
    assert "cannot read the admin token file" in capsys.readouterr().err


def test_run_reads_the_token_once_and_keeps_it_out_of_reprs(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    parser = argparse.ArgumentParser()
    manager_main.configure(parser)
    base = ["run", "--model", "demo", "--export_base", str(tmp_path), "--entry_targets", "e:1", "--ps_targets", "p:1"]
    config = manager_main.run_config_from_args(parser.parse_args([*base, "--admin_token_file", str(token_file)]))
    assert config.admin_token == TOKEN and TOKEN not in repr(config)
    assert manager_main.run_config_from_args(parser.parse_args(base)).admin_token is None
