"""Ports for the servers that tests start.

Picking a port by binding port 0 and closing the socket is racy twice over: the kernel hands ports out of its
ephemeral range, so a client connection made before the server binds (a ZooKeeper session, a gRPC channel) can
take the same local port; and two such picks in a row may return the same number. Either leaves a child that never
binds its port, and a test that times out waiting for it. So ports come from below the ephemeral range, are
checked free on every interface, and are never handed out twice in one test session.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000


class PortAllocator:
    """Ports of ``low..high`` in a random order, each at most once, skipping those something holds."""

    def __init__(self, low: int, high: int, seed: int | None = None) -> None:
        if high - low < 1000:
            raise ValueError(f"port range {low}-{high} is too small")
        self._range = f"{low}-{high}"
        candidates = list(range(low, high + 1))
        random.Random(seed).shuffle(candidates)
        self._candidates = iter(candidates)

    def take(self) -> int:
        for port in self._candidates:
            if _bindable(port):
                return port
        raise RuntimeError(f"no free port left in {self._range}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _below_ephemeral_range() -> tuple[int, int]:
    try:
        ephemeral_low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return LOWEST_PORT, max(LOWEST_PORT + 1000, ephemeral_low - 1)


# One allocator for the whole pytest process, so that no two tests (or two servers of one test) share a port.
_ALLOCATOR = PortAllocator(*_below_ephemeral_range())


def free_port() -> int:
    """A port free on every interface, outside the ephemeral range, not yet given to another test server."""
    return _ALLOCATOR.take()
