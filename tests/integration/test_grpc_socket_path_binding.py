"""``GrpcServerOptions.socket_path`` (``--grpc_socket_path``) in process: the shared gRPC server listens on its port
and on the UNIX socket, takes over the socket file a dead server left, never takes a live server's socket (gRPC's
bind alone would), refuses a path it cannot use, and removes its socket file when it stops."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from monolith_serving.client.health import check_health
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.grpc_server import GrpcServer, GrpcServerOptions, build_server
from monolith_serving.core.grpc_socket_path import (
    MAX_SOCKET_PATH_BYTES,
    SocketPathState,
    check_socket_path,
)

pytestmark = pytest.mark.integration


@pytest.fixture()
def short_dir() -> Iterator[Path]:
    """A directory with a short path, whatever $TMPDIR and pytest's tmp_path look like."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="gsp-") as folder:
        yield Path(folder)


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a killed server leaves it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


async def serving(path: Path, port: int = 0) -> GrpcServer:
    server = build_server(GrpcServerOptions(port=port, host="127.0.0.1", socket_path=path), [])
    await server.start()
    await server.set_serving(True)
    return server


async def health(address: str) -> str:
    return (await asyncio.to_thread(check_health, address, timeout_s=5.0)).status


def test_port_zero_and_a_socket_listen_on_a_free_port_and_the_socket_until_stopped(tmp_path: Path) -> None:
    """Our --port 0 picks a free port, with the socket or without (TF Serving's would serve the socket only)."""
    path = tmp_path / "grpc.sock"

    async def scenario() -> tuple[str, str, bool]:
        server = await serving(path)
        try:
            assert server.port > 0
            over_port, over_socket = await health(f"127.0.0.1:{server.port}"), await health(f"unix:{path}")
        finally:
            await server.stop(0)
        return over_port, over_socket, path.exists()

    assert asyncio.run(scenario()) == ("SERVING", "SERVING", False)


def test_the_socket_file_of_a_dead_server_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "grpc.sock"
    stale_socket(path)
    assert check_socket_path(path) is SocketPathState.STALE

    async def scenario() -> str:
        server = await serving(path)
        try:
            return await health(f"unix:{path}")
        finally:
            await server.stop(0)

    with caplog.at_level(logging.WARNING, logger="monolith_serving.core.grpc_socket_path"):
        assert asyncio.run(scenario()) == "SERVING"
    assert any("removing the socket file left by a server that is gone" in r.getMessage() for r in caplog.records)
    assert not path.exists()


def test_a_socket_a_server_listens_on_is_never_taken(tmp_path: Path) -> None:
    """gRPC's bind would unlink the live socket file and bind a new one, leaving the first server unreachable."""
    path = tmp_path / "grpc.sock"

    async def scenario() -> str:
        first = await serving(path)
        try:
            with pytest.raises(InvalidArgumentError, match="--grpc_socket_path .*a server is listening on this socket"):
                build_server(GrpcServerOptions(port=0, host="127.0.0.1", socket_path=path), [])
            return await health(f"unix:{path}")
        finally:
            await first.stop(0)

    assert asyncio.run(scenario()) == "SERVING"


def test_a_file_that_is_not_a_socket_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")

    async def build() -> None:
        build_server(GrpcServerOptions(port=0, host="127.0.0.1", socket_path=path), [])

    with pytest.raises(InvalidArgumentError, match="--grpc_socket_path .* exists and is not a socket; refusing"):
        asyncio.run(build())
    with pytest.raises(InvalidArgumentError, match="is not a socket"):
        check_socket_path(tmp_path)  # a directory
    assert path.read_text() == "keep me"


def test_a_path_longer_than_sun_path_is_refused_and_the_longest_one_taken(short_dir: Path) -> None:
    folder = short_dir
    longest = folder / ("s" * (MAX_SOCKET_PATH_BYTES - len(os.fsencode(str(folder))) - 1))
    assert len(os.fsencode(str(longest))) == MAX_SOCKET_PATH_BYTES
    too_long = Path(f"{longest}x")
    with pytest.raises(InvalidArgumentError, match=r"--grpc_socket_path .* is 108 bytes long; .* at most 107"):
        check_socket_path(too_long)

    async def scenario() -> str:
        server = await serving(longest)
        try:
            return await health(f"unix:{longest}")
        finally:
            await server.stop(0)

    assert asyncio.run(scenario()) == "SERVING"


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="--grpc_socket_path .*: the directory .*nowhere' does not exist"):
        check_socket_path(tmp_path / "nowhere" / "grpc.sock")
