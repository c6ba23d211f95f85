"""``monolith-serving health --addr host:port``: one gRPC health check (``grpc.health.v1.Health/Check``).

Exit status 0 when the server reports SERVING, 1 for any other status or when the RPC fails, so the
command works as a container ``HEALTHCHECK`` and as an exec probe. It prints the status it saw. A server started
with ``--ssl_config_file`` is checked with the client's ``--ssl_*`` flags (``core.tls_channel``); a bad one is exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monolith_serving.core.cli_flags import add_flag
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.tls_channel import ChannelTls, add_tls_dial_flags, tls_dial_from_args


@dataclass(frozen=True)
class HealthResult:
    serving: bool
    # Name of the health status ("SERVING", "NOT_SERVING", ...) or of the gRPC error code.
    status: str
    detail: str = ""


def _channel(addr: str, tls: ChannelTls | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(addr)
    return grpc.secure_channel(addr, tls.credentials(), options=tls.options())


def check_health(
    addr: str, *, service: str = "", timeout_s: float = 3.0, tls: ChannelTls | None = None
) -> HealthResult:
    """One Check call on a fresh channel (TLS when ``tls``, else plaintext); never raises for RPC failures."""
    with _channel(addr, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            details = err.details() if isinstance(err, grpc.Call) else str(err)
            return HealthResult(False, code.name if code is not None else "RPC_ERROR", details or "")
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return HealthResult(response.status == health_pb2.HealthCheckResponse.SERVING, status_name)


def wait_until_serving(
    addr: str,
    *,
    timeout_s: float,
    still_alive: Callable[[], bool] = lambda: True,
    poll_s: float = 0.1,
    tls: ChannelTls | None = None,
) -> None:
    """Polls ``check_health`` (over TLS when ``tls``) until SERVING. Raises RuntimeError as soon as ``still_alive()``
    is false (the server process died) and TimeoutError after ``timeout_s``, each naming the last status seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not still_alive():
            raise RuntimeError(f"{addr}: server exited before serving")
        result = check_health(addr, timeout_s=1.0, tls=tls)
        if result.serving:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{addr} not SERVING after {timeout_s} s (last: {result.status} {result.detail})")
        time.sleep(poll_s)


def configure(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--addr", required=True, help="host:port of the gRPC server to check")
    add_flag(parser, "--service", default="", help="service name to check ('' = the whole server)")
    add_flag(parser, "--timeout_s", type=float, default=3.0, help="deadline of the Check call in seconds")
    add_tls_dial_flags(parser, "ssl", server="the server")


def run(args: argparse.Namespace) -> int:
    try:
        tls = tls_dial_from_args(args, "ssl")
    except InvalidArgumentError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    result = check_health(args.addr, service=args.service, timeout_s=args.timeout_s, tls=tls)
    line = f"{args.addr} {result.status}" + (f": {result.detail}" if result.detail else "")
    print(line, file=sys.stdout if result.serving else sys.stderr)
    return 0 if result.serving else 1
