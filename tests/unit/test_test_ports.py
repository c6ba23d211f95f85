"""The test port allocator (tests/ports.py): distinct, free, outside the ephemeral range."""

import socket
from pathlib import Path

import pytest
from ports import PortAllocator, free_port


def test_ports_are_never_handed_out_twice() -> None:
    allocator = PortAllocator(20000, 21000, seed=1)
    ports = [allocator.take() for _ in range(900)]
    assert len(set(ports)) == 900
    assert all(20000 <= port <= 21000 for port in ports)


def _take_all(allocator: PortAllocator) -> list[int]:
    ports = []
    with pytest.raises(RuntimeError, match="no free port left"):
        while True:
            ports.append(allocator.take())
    return ports


def test_a_port_in_use_is_skipped_and_an_exhausted_range_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        allocator = PortAllocator(port - 500, port + 500, seed=2)
        ports = _take_all(allocator)
    assert port not in ports
    assert len(ports) == len(set(ports)) and 900 < len(ports) <= 1000
    with pytest.raises(RuntimeError, match="no free port left"):
        allocator.take()


def test_free_port_is_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert free_port() < low
