"""The one discovery interface every service uses, and the pieces shared by its backends.

Paths are ZooKeeper-style absolute paths (``/bzid/service/model/ps:0/1``) for every backend; the Consul
backend maps them to KV keys. Data is raw bytes (the callers own the JSON).

Guarantees common to all backends:
- Every coroutine may be awaited from the asyncio loop; blocking client calls run on a sized executor.
- Listener callbacks (watch events, session states) run *on the asyncio loop* that called ``start()``,
  handed over with ``loop.call_soon_threadsafe``; they must not block. An exception in a listener is
  logged and does not stop later events.
- Ephemeral registrations are *desired state*: the backend re-creates them after a session loss and
  writes them as soon as a connection exists, so callers never re-register by hand. A sequential one
  (``register_ephemeral_sequential``) gets its number once; after a loss it comes back under that same path.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

log = logging.getLogger(__name__)

# Digits of the counter a sequential node's name ends with (ZooKeeper's ``%010d``).
SEQUENCE_DIGITS = 10


class SessionState(enum.StrEnum):
    """Connection state of a discovery session, with ZooKeeper's meaning."""

    CONNECTED = "connected"  # session live; ephemerals are in place
    SUSPENDED = "suspended"  # connection dropped, session may still be alive; views are stale
    LOST = "lost"  # session expired: ephemerals are gone until re-created on reconnect


class EventKind(enum.StrEnum):
    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"


@dataclass(frozen=True)
class WatchEvent:
    """A leaf node (a node without children) under a watched subtree appeared, changed or vanished."""

    kind: EventKind
    path: str
    data: bytes  # the new data; the last known data for REMOVED


WatchListener = Callable[[WatchEvent], None]
StateListener = Callable[[SessionState], None]


class WatchHandle(abc.ABC):
    """Returned by ``watch_subtree``; ``cancel()`` stops delivery (idempotent)."""

    @abc.abstractmethod
    def cancel(self) -> None: ...


class Discovery(abc.ABC):
    """A small coordination-service client: ephemeral registrations, persistent nodes, subtree watches."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin connecting (in the background; does not wait for the server). Idempotent."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Delete own ephemerals (best effort), cancel watches and close the client. Idempotent."""

    @property
    @abc.abstractmethod
    def state(self) -> SessionState: ...

    @abc.abstractmethod
    async def wait_connected(self, timeout_s: float) -> bool:
        """True once the session is CONNECTED, False if ``timeout_s`` passed first."""

    @abc.abstractmethod
    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener`` on the loop at each state transition."""

    @abc.abstractmethod
    def remove_state_listener(self, listener: StateListener) -> None: ...

    @abc.abstractmethod
    async def register_ephemeral(self, path: str, data: bytes) -> None:
        """Declare an ephemeral node (parents created as persistent nodes).

        Written now if connected, else on connect; re-created after every session loss until
        ``unregister``. Replaces a stale node left at ``path`` by an expired session of ours.
        """

    @abc.abstractmethod
    async def register_ephemeral_sequential(self, path_prefix: str, data: bytes) -> str:
        """Create an ephemeral *sequential* node now and return its path: ``path_prefix`` followed by the parent's
        next counter value in ``SEQUENCE_DIGITS`` digits (ZooKeeper's ``create(sequence=True)``). The counter
        never repeats while the parent lives, so two clients never get the same path.

        From then on the returned path is a registration like ``register_ephemeral``'s (``update_ephemeral``,
        ``unregister``), re-created at that *same* path after a session loss: it keeps its number. Needs a live
        session: UnavailableError when there is none (nothing is queued, as the name is not known yet).
        """

    @abc.abstractmethod
    async def update_ephemeral(self, path: str, data: bytes) -> None:
        """Change the data of a registered ephemeral (the new data also survives re-creation)."""

    @abc.abstractmethod
    async def unregister(self, path: str) -> None:
        """Forget a registration and delete its node. Idempotent."""

    @abc.abstractmethod
    async def ensure_path(self, path: str) -> None:
        """Create ``path`` and its parents as empty persistent nodes if missing."""

    @abc.abstractmethod
    async def set_persistent(self, path: str, data: bytes) -> None:
        """Create or overwrite a persistent node (parents created)."""

    @abc.abstractmethod
    async def delete(self, path: str, *, recursive: bool = False) -> None:
        """Delete a node (with ``recursive``, its subtree). Missing nodes are not an error."""

    @abc.abstractmethod
    async def get_children(self, path: str) -> list[str]:
        """Child names (sorted); ``[]`` if ``path`` is missing. UnavailableError if disconnected."""

    @abc.abstractmethod
    async def get_data(self, path: str) -> bytes | None:
        """Node data, or None if missing. Raises UnavailableError if disconnected."""

    @abc.abstractmethod
    async def get_leaves(self, path: str) -> dict[str, bytes]:
        """Every leaf under ``path`` (absolute path → data), read now; used for full resyncs."""

    @abc.abstractmethod
    async def watch_subtree(self, path: str, listener: WatchListener) -> WatchHandle:
        """Report leaf add/change/remove under ``path`` (which need not exist yet).

        The listener first receives ADDED for every current leaf; watches survive reconnects and session
        loss (on re-sync, differences are reported as events).
        """

    async def __aenter__(self) -> Discovery:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def normalize_path(path: str) -> str:
    """Validate an absolute node path and drop a trailing slash."""
    if not path.startswith("/"):
        raise ValueError(f"discovery path must be absolute: {path!r}")
    if path != "/" and path.endswith("/"):
        path = path.rstrip("/")
    if "//" in path:
        raise ValueError(f"discovery path has an empty component: {path!r}")
    return path or "/"


def join_path(parent: str, child: str) -> str:
    return f"{parent.rstrip('/')}/{child}"


def leaves_of(nodes: Mapping[str, bytes], root: str) -> dict[str, bytes]:
    """From a flat ``path → data`` map of a subtree, keep the nodes strictly below ``root`` without children.

    Works whether or not the map holds the intermediate nodes (ZooKeeper has them, Consul KV has not).
    """
    prefix = root.rstrip("/") + "/"
    inner: set[str] = set()
    for path in nodes:
        parent = path.rsplit("/", 1)[0]
        while parent.startswith(prefix) and parent not in inner:
            inner.add(parent)
            parent = parent.rsplit("/", 1)[0]
    return {p: d for p, d in nodes.items() if p.startswith(prefix) and p not in inner}


class SubtreeDiffer:
    """Turns successive snapshots of a subtree's leaves into watch events for one listener.

    Not thread-safe: call ``apply`` only on the asyncio loop (backends post snapshots there).
    """

    def __init__(self, listener: WatchListener) -> None:
        self._listener = listener
        self._known: dict[str, bytes] = {}
        self.cancelled = False

    def apply(self, snapshot: Mapping[str, bytes]) -> None:
        if self.cancelled:
            return
        events: list[WatchEvent] = []
        for path, data in snapshot.items():
            old = self._known.get(path)
            if old is None:
                events.append(WatchEvent(EventKind.ADDED, path, data))
            elif old != data:
                events.append(WatchEvent(EventKind.CHANGED, path, data))
        for path, data in self._known.items():
            if path not in snapshot:
                events.append(WatchEvent(EventKind.REMOVED, path, data))
        self._known = dict(snapshot)
        for event in events:
            safe_call(self._listener, event)


def safe_call(listener: Callable[[object], None] | Callable[..., None], arg: object) -> None:
    """Run a user listener; log (with traceback) instead of letting it break event delivery."""
    try:
        listener(arg)
    except Exception:
        log.exception("discovery listener %r failed", listener)
