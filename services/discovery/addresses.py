"""Which registered address of a v1 replica to hand out, following Monolith's readers.

A v1 ``ReplicaMeta`` carries ``address`` ("host:port") and ``address_ipv6`` ("[host]:port"). Monolith's
writer puts ``0.0.0.0:port`` into ``address`` when it cannot resolve its own IPv4 address and ``[::]:port``
into ``address_ipv6`` when it cannot resolve an IPv6 one; its readers treat those as "not set" and fall back
to the other family. Readers prefer IPv4 unless the host they run on has no IPv4 address.
Pure functions; ``host_address_family`` is called once at start-up with the environment and a resolver.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from enum import StrEnum

__all__ = ["AddressFamily", "choose_address", "host_address_family", "resolve_own_ipv4"]

_UNSET_IPV4_PREFIX = "0.0.0.0"
_UNSET_IPV6_PREFIX = "[::]"
# Set in Monolith's (TCE/byterec) containers; their presence means "trust these, do not resolve".
_HOST_ENV = ("MY_HOST_IP", "MY_POD_IP", "MY_HOST_IPV6")


class AddressFamily(StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"


def choose_address(ipv4: str | None, ipv6: str | None, prefer: AddressFamily = AddressFamily.IPV4) -> str | None:
    """The address to dial: the preferred family if set, else the other, else None.

    ``0.0.0.0...`` (IPv4) and ``[::]...`` (IPv6) placeholders and empty strings count as not set.
    """
    if not ipv4 or ipv4.startswith(_UNSET_IPV4_PREFIX):
        ipv4 = None
    if not ipv6 or ipv6.startswith(_UNSET_IPV6_PREFIX):
        ipv6 = None
    if prefer is AddressFamily.IPV6:
        return ipv6 or ipv4
    return ipv4 or ipv6


def resolve_own_ipv4() -> str | None:
    """``gethostbyname(gethostname())``, or None when that fails (blocking: may ask DNS)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return None


def host_address_family(
    env: Mapping[str, str], resolve_ipv4: Callable[[], str | None] = resolve_own_ipv4
) -> AddressFamily:
    """IPV6 when this host has no IPv4 address, else IPV4 (the family a reader should prefer).

    As Monolith decides it: if any of MY_HOST_IP / MY_POD_IP / MY_HOST_IPV6 is set, the IPv4 address is
    MY_HOST_IP if set, else MY_POD_IP (so only MY_HOST_IPV6 set, or an empty value, means IPv6-only);
    otherwise the host name is resolved and a failure means IPv6-only.
    """
    if any(name in env for name in _HOST_ENV):
        ipv4 = env["MY_HOST_IP"] if "MY_HOST_IP" in env else env.get("MY_POD_IP")
    else:
        ipv4 = resolve_ipv4()
    return AddressFamily.IPV4 if ipv4 else AddressFamily.IPV6
