"""The hosts an agent writes into its children's registry addresses, resolved once at start as Monolith's agent
resolves them when it registers a replica.

IPv4: ``MY_HOST_IP``, else what the host name resolves to, else ``0.0.0.0``: the placeholder every reader (ours,
Monolith's ``ReplicaMeta.get_address``) skips for the IPv6 address. IPv6: ``MY_HOST_IPV6``, else the host name's
IPv6 address, else none. So an IPv6-only pod without ``MY_HOST_IP`` registers an address its readers can dial, not
a loopback one that sends every reader to itself.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

IPV4_PLACEHOLDER = "0.0.0.0"


@dataclass(frozen=True)
class AdvertisedHosts:
    ipv4: str  # a dotted address, or IPV4_PLACEHOLDER
    ipv6: str | None  # without brackets; None: no IPv6 address is written

    def dial_host(self) -> str:
        """The one host to write where a format has a single address (v3 ``container_service``, GetResource): the
        IPv4 one, else the bracketed IPv6 one, so an IPv6-only pod is not advertised as ``0.0.0.0``."""
        if self.ipv4 == IPV4_PLACEHOLDER and self.ipv6:
            return f"[{self.ipv6}]"
        return self.ipv4


def _host_ipv4(host_name: str) -> str:
    return socket.gethostbyname(host_name)


def _host_ipv6(host_name: str) -> str:
    return str(socket.getaddrinfo(host_name, None, socket.AF_INET6)[0][4][0])


def resolve_advertised_hosts(
    host_ip: str | None,
    host_ipv6: str | None,
    *,
    host_name: Callable[[], str] = socket.gethostname,
    ipv4_of: Callable[[str], str] = _host_ipv4,
    ipv6_of: Callable[[str], str] = _host_ipv6,
) -> AdvertisedHosts:
    """``host_ip`` / ``host_ipv6`` (``MY_HOST_IP`` / ``MY_HOST_IPV6``) when set, else resolved from the host name."""
    name = host_name()
    ipv4 = host_ip
    if not ipv4:
        try:
            ipv4 = ipv4_of(name)
        except OSError as error:
            log.warning("host %r has no IPv4 address (%s) and MY_HOST_IP is unset: registering %s", name, error,
                        IPV4_PLACEHOLDER)  # fmt: skip
            ipv4 = IPV4_PLACEHOLDER
    ipv6 = host_ipv6
    if not ipv6:
        try:
            ipv6 = ipv6_of(name)
        except OSError:
            ipv6 = None  # the common case on IPv4 hosts: nothing to write
    return AdvertisedHosts(ipv4=ipv4, ipv6=ipv6)
