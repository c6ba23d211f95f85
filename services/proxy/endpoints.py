"""Where the proxy learns which entry replicas serve a model: the ``EndpointSource`` interface.

Two implementations: :class:`StaticEndpointSource` (a fixed ``--entry_targets`` list, standalone use and
tests) and ``discovery_source.DiscoveryEndpointSource`` (the discovery ReplicaWatcher view). The router
only sees this interface.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError


class EndpointSource(Protocol):
    """The current AVAILABLE entry addresses per model. Called on the event loop; must not block."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def lists_models(self) -> bool:
        """True when ``endpoints()`` refuses names it does not know, so the names it serves come from the
        registry or the configuration, never from clients alone (they may be metric labels as they are)."""
        ...

    def endpoints(self, model: str) -> tuple[str, ...]:
        """AVAILABLE ``host:port`` addresses serving ``model``; empty when the model is known but has no
        AVAILABLE replica right now (the core answers UNAVAILABLE: retry). Raises NotFoundError for a name the
        source does not know (the core answers NOT_FOUND: do not retry)."""
        ...

    def all_addresses(self) -> tuple[str, ...]:
        """Every AVAILABLE entry address of every model (admin broadcasts, channel pruning)."""
        ...


def parse_targets(text: str) -> tuple[str, ...]:
    """``host:port,host:port`` → addresses (order kept, duplicates dropped); malformed → InvalidArgumentError."""
    out: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgumentError(f"bad entry target {item!r}: expected host:port")
        if item not in out:
            out.append(item)
    if not out:
        raise InvalidArgumentError("no entry targets given")
    return tuple(out)


class StaticEndpointSource:
    """A fixed list of entry addresses serving ``models`` (every model name when ``models`` is None).

    With ``models`` None the proxy cannot tell an unknown model apart, so the entry answers NOT_FOUND
    itself and the proxy relays it.
    """

    def __init__(self, targets: Iterable[str], *, models: Iterable[str] | None = None) -> None:
        self._targets = tuple(targets)
        self._models = frozenset(models) if models is not None else None

    @property
    def lists_models(self) -> bool:
        return self._models is not None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def endpoints(self, model: str) -> tuple[str, ...]:
        if self._models is not None and model not in self._models:
            raise NotFoundError(f"model {model!r} is not served here (known: {', '.join(sorted(self._models))})")
        return self._targets

    def all_addresses(self) -> tuple[str, ...]:
        return self._targets
