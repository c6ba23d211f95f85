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
- A sequential create whose reply was lost leaves no unknown node: the next create under that prefix adopts the
  node the lost one made, if this session holds it (:class:`SequentialCreates`).
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from monolith_serving.core.errors import UnavailableError

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

        UnavailableError also when the reply was lost (the server may have made the node anyway): calling again
        with the same prefix then returns the node that call made, if this session holds it, instead of making a
        second one.
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


class SequentialCreates:
    """Makes a session backend's sequential creates safe to retry after a lost reply.

    A create whose reply never came (the connection dropped mid-call) may have made its node anyway: an ephemeral
    of this session under a number nobody knows, which stays as long as the session, while a plain retry makes a
    second one. So the data of each failed create is kept per prefix, and the next create under that prefix first
    asks the backend for the nodes of this session under it holding such data (``find_own``) and adopts one.
    ZooKeeper's recipe marks the node's *name* with a GUID for this; Monolith's readers parse the name as a
    number, so here the owning session and the data pick the node out instead.

    Creates run one at a time, so a lookup never takes a node that another create of this client made and is
    about to return; nodes already handed out are never adopted. Use from one asyncio loop.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._handed_out: set[str] = set()
        self._unanswered: dict[str, set[bytes]] = {}  # prefix -> data of its failed creates

    async def create(
        self,
        path_prefix: str,
        data: bytes,
        *,
        create: Callable[[], Awaitable[str]],
        find_own: Callable[[frozenset[bytes]], Awaitable[list[str]]],
        release: Callable[[str], Awaitable[None]],
    ) -> str:
        """The path of the node ``create`` makes, or of the node a failed earlier create under ``path_prefix``
        made (``find_own`` lists this session's nodes under the prefix holding any of the given data; ``release``
        drops a surplus one). UnavailableError from any of them is the caller's to retry."""
        async with self._lock:
            path = await self._adopt_unanswered(path_prefix, find_own, release)
            if path is None:
                try:
                    path = await create()
                except (UnavailableError, asyncio.CancelledError):
                    # Failed before or after the server acted: we cannot tell, so the next create looks first. A
                    # caller cancelled mid-call is the same case: the backend's call may still reach the server.
                    self._unanswered.setdefault(path_prefix, set()).add(data)
                    raise
            self._unanswered.pop(path_prefix, None)
            self._handed_out.add(path)
            return path

    async def _adopt_unanswered(
        self,
        path_prefix: str,
        find_own: Callable[[frozenset[bytes]], Awaitable[list[str]]],
        release: Callable[[str], Awaitable[None]],
    ) -> str | None:
        sent = self._unanswered.get(path_prefix)
        if not sent:
            return None
        own = sorted(p for p in await find_own(frozenset(sent)) if p not in self._handed_out)
        if not own:
            return None  # the failed creates never reached the server (or their session is gone)
        adopted, *surplus = own
        log.warning("adopting %s: made by a create whose reply was lost", adopted)
        for path in surplus:
            # Only possible if several failed creates all reached the server; none of them may stay behind.
            log.warning("deleting %s: another node made by a create whose reply was lost", path)
            await release(path)
        return adopted


def is_sequential_name(name: str, leaf_prefix: str) -> bool:
    """Whether ``name`` is ``leaf_prefix`` followed by a sequence number of ``SEQUENCE_DIGITS`` digits."""
    number = name[len(leaf_prefix) :]
    return name.startswith(leaf_prefix) and len(number) == SEQUENCE_DIGITS and number.isascii() and number.isdigit()


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
