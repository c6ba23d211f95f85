"""ZooKeeper backend (kazoo). The only module of the package that imports kazoo.

Threading: kazoo runs its own connection and event threads. Our kazoo callbacks (state listener, watch
triggers) never block: they only hand the event to the asyncio loop with ``call_soon_threadsafe``. All
blocking kazoo calls run on a sized ``ThreadPoolExecutor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from monolith_serving.core.aio_wait import within
from monolith_serving.core.errors import UnavailableError
from monolith_serving.discovery.base import (
    SessionState,
    SubtreeDiffer,
    WatchHandle,
    WatchListener,
    is_sequential_name,
    join_path,
    leaves_of,
    normalize_path,
)
from monolith_serving.discovery.config import DiscoveryConfig
from monolith_serving.discovery.session_backend import SessionBackend

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors meaning "the server cannot be reached right now" (retry later), as opposed to bugs.
_TRANSIENT = (ConnectionLoss, SessionExpiredError, KazooTimeoutError)

# Back-off between failed resync reads of one subtree watch: short, so a blip costs little, and growing, so a
# read that keeps failing (a bug, a server refusing) does not spin.
_RESYNC_RETRY_MIN_S = 0.1
_RESYNC_RETRY_MAX_S = 5.0

_STATE_MAP = {
    KazooState.CONNECTED: SessionState.CONNECTED,
    KazooState.SUSPENDED: SessionState.SUSPENDED,
    KazooState.LOST: SessionState.LOST,
}


class ZkDiscovery(SessionBackend):
    """Discovery over a ZooKeeper ensemble.

    Connecting retries forever with backoff (ZooKeeper down at start is not fatal: ``state`` stays
    SUSPENDED until the first connect). Reads while disconnected raise UnavailableError at once.
    """

    def __init__(self, config: DiscoveryConfig, *, read_timeout_s: float = 10.0) -> None:
        super().__init__(
            backend="zookeeper",
            executor=ThreadPoolExecutor(max_workers=config.executor_workers, thread_name_prefix="zk-discovery"),
        )
        self._config = config
        self._read_timeout_s = read_timeout_s
        self._client = KazooClient(
            hosts=config.zk_servers,
            timeout=config.session_timeout_s,
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=5.0),
            command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=1.0),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watches: list[_ZkSubtreeWatch] = []

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._client.add_listener(self._on_kazoo_state)
        self._client.start_async()  # connects in kazoo's thread, retrying forever

    async def stop(self) -> None:
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        for watch in list(self._watches):
            watch.cancel()
        for task in list(self._tasks):
            task.cancel()
        # Closing the session would delete these too; deleting first makes them vanish before the close.
        paths = [*self._ephemerals, *self._pending_deletes]
        self._ephemerals.clear()
        self._pending_deletes.clear()
        if self._client.connected:
            for path in paths:
                try:
                    # Only our own: a newer process of this replica may have taken the node over meanwhile.
                    await self._run(self._delete_if_ours_blocking, path)
                except (*_TRANSIENT, KazooException) as exc:
                    log.warning("could not delete ephemeral %s on stop: %r", path, exc)
        await self._run(self._close_client)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _close_client(self) -> None:
        self._client.stop()
        self._client.close()

    # ---- state -----------------------------------------------------------------------------------------
    def session_id(self) -> tuple[int, bytes] | None:
        """(session id, password) of the live session; for diagnostics and session-expiry tests."""
        client_id: tuple[int, bytes] | None = self._client.client_id
        return client_id

    def _on_kazoo_state(self, kazoo_state: str) -> None:
        # Runs on kazoo's connection thread: must not block, so only hand over to the loop.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        state = _STATE_MAP[kazoo_state]
        loop.call_soon_threadsafe(self._set_state, state)

    def _set_state(self, state: SessionState) -> None:
        super()._set_state(state)
        if state is SessionState.CONNECTED and not self._stopped:
            # After any reconnect (same session or a new one after LOST) bring ephemerals and watches back; a
            # surviving session also gets the deletes it missed.
            self.spawn(self._reconcile_all_ephemerals())
            for watch in self._watches:
                watch.request_resync()

    # ---- ephemerals ------------------------------------------------------------------------------------
    async def _delete_ephemeral(self, path: str) -> None:
        async with self._ephemeral_lock:
            if path not in self._pending_deletes or path in self._ephemerals or self._state is SessionState.LOST:
                self._pending_deletes.discard(path)  # registered again, or died with the lost session
                return
            if not self._client.connected:
                return  # the session may survive the outage: deleted by the reconcile after the next CONNECTED
            try:
                await self._run(self._delete_if_ours_blocking, path)
            except _TRANSIENT as exc:
                log.warning("ephemeral %s not deleted (%r); will retry on reconnect", path, exc)
                return
            self._pending_deletes.discard(path)

    def _delete_if_ours_blocking(self, path: str) -> None:
        """Delete ``path`` if it is an ephemeral of this session (runs on the executor); a node another session
        created there (e.g. a newer process of the same replica) is not ours to remove."""
        stat = self._client.exists(path)
        client_id = self._client.client_id
        if stat is None or client_id is None or stat.ephemeralOwner != client_id[0]:
            return
        with contextlib.suppress(NoNodeError):
            self._client.delete(path)

    async def _create_sequential(self, path_prefix: str, data: bytes) -> str:
        self._require_connected()
        try:
            path: str = await self._run(
                self._client.create, path_prefix, data, ephemeral=True, sequence=True, makepath=True
            )
        except _TRANSIENT as exc:
            raise UnavailableError(f"zookeeper: sequential node {path_prefix}* not created: {exc!r}") from exc
        return path

    async def _own_sequential_nodes(self, path_prefix: str, sent: frozenset[bytes]) -> list[str]:
        """Nodes whose ephemeralOwner is this session."""
        self._require_connected()
        try:
            found: list[str] = await self._run(self._own_sequential_nodes_blocking, path_prefix, sent)
        except _TRANSIENT as exc:
            raise UnavailableError(f"zookeeper: nodes under {path_prefix}* not read: {exc!r}") from exc
        return found

    def _own_sequential_nodes_blocking(self, path_prefix: str, sent: frozenset[bytes]) -> list[str]:
        client_id = self._client.client_id
        if client_id is None:
            raise ConnectionLoss("no session")
        parent, _, leaf = path_prefix.rpartition("/")
        parent = parent or "/"
        # The server we reconnected to may lag behind the one that made the node: catch it up with the leader.
        self._client.sync(parent)
        try:
            children = self._client.get_children(parent)
        except NoNodeError:
            return []
        reads = [
            (path, self._client.get_async(path))
            for path in (join_path(parent, c) for c in children if is_sequential_name(c, leaf))
        ]
        own: list[str] = []
        for path, result in reads:
            try:
                node_data, stat = result.get(timeout=self._read_timeout_s)
            except NoNodeError:
                continue
            if stat.ephemeralOwner == client_id[0] and _node_bytes(node_data) in sent:
                own.append(path)
        return own

    async def _write_ephemeral(self, path: str) -> None:
        async with self._ephemeral_lock:
            data = self._ephemerals.get(path)
            if data is None or not self._client.connected:
                return  # written by the reconcile that follows the next CONNECTED
            try:
                await self._run(self._put_ephemeral_blocking, path, data)
            except _TRANSIENT as exc:
                log.warning("ephemeral %s not written (%r); will retry on reconnect", path, exc)

    def _put_ephemeral_blocking(self, path: str, data: bytes) -> None:
        """Make ``path`` an ephemeral of this session holding ``data`` (runs on the executor)."""
        try:
            self._client.create(path, data, ephemeral=True, makepath=True)
            return
        except NodeExistsError:
            pass
        try:
            current, stat = self._client.get(path)
        except NoNodeError:
            self._client.create(path, data, ephemeral=True, makepath=True)
            return
        client_id = self._client.client_id
        if client_id is not None and stat.ephemeralOwner == client_id[0]:
            if current != data:
                self._client.set(path, data, version=stat.version)
            return
        # Left by another session (e.g. our previous process whose session has not expired yet):
        # replace it so the node lives and dies with *this* session.
        log.warning("replacing node %s owned by session 0x%x", path, stat.ephemeralOwner)
        with contextlib.suppress(NoNodeError):
            self._client.delete(path, version=stat.version)
        self._client.create(path, data, ephemeral=True, makepath=True)

    # ---- persistent nodes and reads -------------------------------------------------------------------
    async def ensure_path(self, path: str) -> None:
        self._require_connected()
        await self._run(self._client.ensure_path, normalize_path(path))

    async def set_persistent(self, path: str, data: bytes) -> None:
        self._require_connected()
        await self._run(self._set_persistent_blocking, normalize_path(path), data)

    def _set_persistent_blocking(self, path: str, data: bytes) -> None:
        try:
            self._client.create(path, data, makepath=True)
        except NodeExistsError:
            self._client.set(path, data)

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        self._require_connected()
        try:
            await self._run(self._client.delete, normalize_path(path), recursive=recursive)
        except NoNodeError:
            pass
        except NotEmptyError as exc:
            raise ValueError(f"{path} has children; pass recursive=True") from exc

    async def get_children(self, path: str) -> list[str]:
        self._require_connected()
        try:
            children: list[str] = await self._read(self._client.get_children, normalize_path(path))
        except NoNodeError:
            return []
        return sorted(children)

    async def get_data(self, path: str) -> bytes | None:
        self._require_connected()
        try:
            data, _stat = await self._read(self._client.get, normalize_path(path))
        except NoNodeError:
            return None
        return _node_bytes(data)

    async def get_leaves(self, path: str) -> dict[str, bytes]:
        self._require_connected()
        root = normalize_path(path)
        nodes = await self._read(self.snapshot_blocking, root, None)
        return leaves_of(nodes, root)

    def snapshot_blocking(self, root: str, watcher: Callable[[Any], None] | None) -> dict[str, bytes]:
        """Read a whole subtree (``path → data``), level by level with pipelined async calls.

        With ``watcher``, leaves a child and a data watch on every node (and an exists watch on a missing
        root) so that any change under ``root`` fires it once.
        """
        nodes: dict[str, bytes] = {}
        if self._client.exists(root, watch=watcher) is None:
            return nodes
        level = [root]
        while level:
            child_calls = [(p, self._client.get_children_async(p, watch=watcher)) for p in level]
            data_calls = [(p, self._client.get_async(p, watch=watcher)) for p in level]
            next_level: list[str] = []
            for p, result in data_calls:
                try:
                    data, _stat = result.get(timeout=self._read_timeout_s)
                except NoNodeError:
                    continue  # deleted meanwhile; its parent's child watch fires
                nodes[p] = _node_bytes(data)
            for p, result in child_calls:
                try:
                    children = result.get(timeout=self._read_timeout_s)
                except NoNodeError:
                    continue
                next_level.extend(join_path(p, c) for c in children)
            level = next_level
        return {p: d for p, d in nodes.items() if p != root}

    # ---- watches ---------------------------------------------------------------------------------------
    async def watch_subtree(self, path: str, listener: WatchListener) -> WatchHandle:
        if self._loop is None:
            raise RuntimeError("start() the discovery client before watching")
        watch = _ZkSubtreeWatch(self, normalize_path(path), SubtreeDiffer(listener))
        self._watches.append(watch)
        watch.request_resync()
        return watch

    def _forget_watch(self, watch: _ZkSubtreeWatch) -> None:
        if watch in self._watches:
            self._watches.remove(watch)

    # ---- helpers ---------------------------------------------------------------------------------------
    def _require_connected(self) -> None:
        if not self._client.connected:
            raise UnavailableError(f"zookeeper {self._config.zk_servers} not connected ({self._state.value})")

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await within(self._run(fn, *args), self._read_timeout_s)
        except (TimeoutError, *_TRANSIENT) as exc:
            raise UnavailableError(f"zookeeper read failed: {exc!r}") from exc


def _node_bytes(data: bytes | None) -> bytes:
    """A node's data; null data (``zkCli.sh create <path>`` without data, kazoo gives None) reads as empty."""
    return b"" if data is None else bytes(data)


class _ZkSubtreeWatch(WatchHandle):
    """Keeps one subtree in sync: any ZooKeeper watch trigger schedules a coalesced full re-read.

    Re-reading the (small) subtree on each change re-arms every one-shot watch and makes the event
    stream exact even after missed notifications (reconnects, session loss).
    """

    def __init__(self, owner: ZkDiscovery, root: str, differ: SubtreeDiffer) -> None:
        self._owner = owner
        self._root = root
        self._differ = differ
        self._running = False
        self._dirty = False
        self._cancelled = False
        loop = owner._loop
        assert loop is not None
        self._loop = loop

    def cancel(self) -> None:
        self._cancelled = True
        self._differ.cancelled = True
        self._owner._forget_watch(self)

    def _on_zk_watch(self, _event: Any) -> None:
        # Runs on kazoo's event thread: only hand over to the loop.
        if not self._cancelled and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.request_resync)

    def request_resync(self) -> None:
        if self._cancelled:
            return
        self._dirty = True
        if not self._running:
            self._running = True
            self._owner.spawn(self._resync_loop())

    async def _resync_loop(self) -> None:
        """Re-reads until a read succeeds with no new request pending, or the client is disconnected.

        A failed read leaves the watch dirty and is retried after a back-off, never given up while connected:
        the failure may be the old session's read, with the new session's CONNECTED (whose request this loop
        absorbed) already past, and then nothing else would ever re-arm the watches.
        """
        retry_s = _RESYNC_RETRY_MIN_S
        try:
            while self._dirty and not self._cancelled:
                self._dirty = False
                if not self._owner._client.connected:
                    return  # the next CONNECTED requests a resync
                if await self._resync_once():
                    retry_s = _RESYNC_RETRY_MIN_S
                    continue
                self._dirty = True
                await asyncio.sleep(retry_s)
                retry_s = min(2 * retry_s, _RESYNC_RETRY_MAX_S)
        finally:
            self._running = False

    async def _resync_once(self) -> bool:
        """One full read of the subtree (re-arming its watches) diffed into events; False if the read failed."""
        started = time.monotonic()
        try:
            nodes = await self._owner._run(self._owner.snapshot_blocking, self._root, self._on_zk_watch)
        except (*_TRANSIENT, KazooException) as exc:
            log.warning("resync of %s failed (%r); retrying", self._root, exc)
            return False
        except Exception:
            # A bug must not end the watch for good: log it with its traceback and keep retrying.
            log.exception("resync of %s failed unexpectedly; retrying", self._root)
            return False
        self._differ.apply(leaves_of(nodes, self._root))
        log.debug("resynced %s (%d nodes) in %.3fs", self._root, len(nodes), time.monotonic() - started)
        return True
