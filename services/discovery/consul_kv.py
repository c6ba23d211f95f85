"""Consul backend (py-consul). The only module of the package that imports consul.

Mapping (see docs/discovery.md): a node path ``/a/b/c`` is the KV key ``a/b/c`` holding the same bytes;
an ephemeral node is a key acquired by this client's session (TTL = ``session_timeout_s``,
``behavior=delete``, no lock delay), renewed by a background task every TTL/3; a subtree watch is a
loop of blocking ``recurse`` queries on the key prefix with ``?index``. Intermediate "directories" are
implicit, as in Consul KV.

Session states: CONNECTED while the session renews; SUSPENDED when Consul cannot be reached (the
session may still be alive); LOST when Consul reports the session gone (expired or destroyed) - then a
new session is created and every registration is re-acquired, as with a ZooKeeper session loss. A session that
outlives an outage gets what the outage kept from Consul: every registration is re-written on SUSPENDED ->
CONNECTED, and writes or deletes that failed are retried after each successful renew (an outage shorter than
the renew interval never shows as SUSPENDED).

Sequential nodes: ZooKeeper numbers them with a counter of the parent node. Here the counter is a key
``<parent>/.sequence`` (:data:`SEQUENCE_COUNTER_NAME`) holding the next number in decimal, taken with a
check-and-set (``?cas=<ModifyIndex>``, ``cas=0`` to create it): of two clients reading the same value only one
write succeeds, the other reads again, so no number is handed out twice. The node is then acquired by the session
like any ephemeral. Every read of this backend hides the counter keys, as ZooKeeper's counter is not a node.
An acquire whose reply was lost is adopted by the next create under its prefix, not repeated
(:class:`~monolith_serving.discovery.base.SequentialCreates`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import consul

from monolith_serving.core.aio_wait import within
from monolith_serving.core.errors import FailedPreconditionError, UnavailableError
from monolith_serving.discovery.base import (
    SEQUENCE_DIGITS,
    SessionState,
    SubtreeDiffer,
    WatchHandle,
    WatchListener,
    is_sequential_name,
    leaves_of,
    normalize_path,
)
from monolith_serving.discovery.config import DiscoveryConfig
from monolith_serving.discovery.session_backend import SessionBackend

log = logging.getLogger(__name__)
T = TypeVar("T")

# requests' errors derive from OSError; ConsulException covers 5xx and client errors.
_TRANSIENT: tuple[type[BaseException], ...] = (OSError, consul.ConsulException)

# Name of the key under a parent that holds the parent's next sequence number (hidden from every read).
SEQUENCE_COUNTER_NAME = ".sequence"
# Check-and-set rounds before giving up: each failed round means another client took a number meanwhile.
_SEQUENCE_ATTEMPTS = 100


def path_to_key(path: str) -> str:
    """``/a/b`` → ``a/b`` (Consul keys must not start with a slash); ``/`` → ``""``."""
    return normalize_path(path).lstrip("/")


def key_to_path(key: str) -> str:
    return "/" + key.rstrip("/")


def _is_sequence_counter(key: str) -> bool:
    return key.rstrip("/").rpartition("/")[2] == SEQUENCE_COUNTER_NAME


def _sequence_counter_key(prefix_key: str) -> str:
    """The counter of the parent of ``prefix_key`` (one per parent, as ZooKeeper's)."""
    parent, sep, _leaf = prefix_key.rpartition("/")
    return f"{parent}{sep}{SEQUENCE_COUNTER_NAME}"


def _counter_value(key: str, entry: dict[str, Any] | None) -> int:
    if entry is None:
        return 0
    raw = entry.get("Value") or b"0"
    text = raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else str(raw)
    if not (text.isascii() and text.isdigit()):
        # Not transient (retrying reads the same value): an operator must fix or delete the key.
        raise FailedPreconditionError(f"consul key {key} should hold the next sequence number, holds {raw!r}")
    return int(text)


def _entry_bytes(entry: dict[str, Any]) -> bytes:
    value = entry.get("Value")
    if isinstance(value, str):  # raw API responses are base64 text; py-consul decodes to bytes
        value = base64.b64decode(value)
    return bytes(value or b"")


def _entries_to_nodes(entries: list[dict[str, Any]] | None) -> dict[str, bytes]:
    return {
        key_to_path(str(entry["Key"])): _entry_bytes(entry)
        for entry in entries or []
        if not _is_sequence_counter(str(entry["Key"]))
    }


class ConsulDiscovery(SessionBackend):
    """Discovery over a Consul agent's HTTP API."""

    def __init__(self, config: DiscoveryConfig, *, retry_delay_s: float = 0.5) -> None:
        super().__init__(
            backend="consul",
            executor=ThreadPoolExecutor(max_workers=config.executor_workers, thread_name_prefix="consul"),
        )
        self._config = config
        self._ttl_s = config.session_timeout_s
        self._retry_delay_s = retry_delay_s
        self._client = consul.Consul(
            host=config.consul_host,
            port=config.consul_port,
            scheme=config.consul_scheme,
            token=config.consul_token,
        )
        # Blocking queries park a thread for up to `consul_watch_wait_s`; keep them off the main pool.
        self._watch_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="consul-watch")
        self._session_id: str | None = None
        # Registrations whose last write failed while the session lived; touched only on the loop.
        self._unwritten: set[str] = set()
        self._watches: list[_ConsulSubtreeWatch] = []

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.spawn(self._session_loop())

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for watch in list(self._watches):
            watch.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        session_id, self._session_id = self._session_id, None
        if session_id is not None:
            # Destroying the session deletes every key it holds (behavior=delete): our ephemerals go first.
            try:
                await self._run(self._client.session.destroy, session_id)
            except _TRANSIENT as exc:
                log.warning("could not destroy consul session %s: %r", session_id, exc)
        self._ephemerals.clear()
        self._pending_deletes.clear()
        self._unwritten.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._watch_executor.shutdown(wait=False, cancel_futures=True)

    # ---- state -----------------------------------------------------------------------------------------
    @property
    def session_id(self) -> str | None:
        """The live Consul session; for diagnostics and session-loss tests."""
        return self._session_id

    async def _session_loop(self) -> None:
        """Create, renew and (after loss) re-create the session. Never ends until cancelled."""
        disconnected_since: float | None = None
        while True:
            try:
                if self._session_id is None:
                    await self._create_session()
                else:
                    await self._renew_session(self._session_id)
                disconnected_since = None
                await asyncio.sleep(self._ttl_s / 3)
            except consul.NotFound:
                log.warning("consul session %s expired or was destroyed", self._session_id)
                self._session_id = None
                self._set_state(SessionState.LOST)
            except _TRANSIENT as exc:
                now = time.monotonic()
                disconnected_since = disconnected_since or now
                # Past twice the TTL Consul has certainly invalidated the session (and deleted our keys).
                if self._session_id is not None and now - disconnected_since > 2 * self._ttl_s:
                    self._session_id = None
                    self._set_state(SessionState.LOST)
                elif self._state is SessionState.CONNECTED:
                    self._set_state(SessionState.SUSPENDED)
                log.warning("consul unreachable (%r); retrying", exc)
                await asyncio.sleep(self._retry_delay_s)

    async def _create_session(self) -> None:
        self._session_id = await self._run(
            self._client.session.create,
            name="monolith-serving",
            ttl=max(10, int(self._ttl_s)),
            behavior="delete",
            lock_delay=0,  # re-acquiring our keys right after a loss must not be refused
        )
        self._unwritten.clear()  # the full reconcile below writes everything
        self._set_state(SessionState.CONNECTED)
        await self._reconcile_all_ephemerals()
        self._wake_watches()

    async def _renew_session(self, session_id: str) -> None:
        await self._run(self._client.session.renew, session_id)
        resumed = self._state is not SessionState.CONNECTED
        self._set_state(SessionState.CONNECTED)
        if resumed:
            # The session outlived the outage, and so did whatever it held; bring it to the desired state.
            self._unwritten.clear()
            await self._reconcile_all_ephemerals()
            self._wake_watches()
        else:
            await self._retry_failed_changes()

    async def _retry_failed_changes(self) -> None:
        """Deletes and writes that failed while the session stayed CONNECTED (an outage between two renews)."""
        for path in list(self._pending_deletes):
            await self._delete_ephemeral(path)
        for path in list(self._unwritten):
            await self._write_ephemeral(path)

    def _wake_watches(self) -> None:
        for watch in self._watches:
            watch.wake()

    # ---- ephemerals ------------------------------------------------------------------------------------
    async def _delete_ephemeral(self, path: str) -> None:
        async with self._ephemeral_lock:
            session_id = self._session_id
            if path not in self._pending_deletes or path in self._ephemerals or session_id is None:
                self._pending_deletes.discard(path)  # registered again, or no session: its keys are gone
                return
            try:
                deleted = await self._run(self._release_blocking, path_to_key(path), session_id)
            except _TRANSIENT as exc:
                log.warning("ephemeral %s not deleted (%r); will retry after the next renew", path, exc)
                return
            if deleted:
                self._pending_deletes.discard(path)

    def _release_blocking(self, key: str, session_id: str) -> bool:
        """Delete ``key`` if ``session_id`` holds it; True when it is gone or not ours (nothing left to do)."""
        _index, entry = self._client.kv.get(key)
        if entry is None or entry.get("Session") != session_id:
            return True  # a key another session holds (e.g. a newer process of the same replica) is not ours
        # cas: a concurrent change leaves it for the next retry instead of deleting someone else's write.
        return bool(self._client.kv.delete(key, cas=entry["ModifyIndex"]))

    async def _write_ephemeral(self, path: str) -> None:
        async with self._ephemeral_lock:
            data = self._ephemerals.get(path)
            session_id = self._session_id
            if data is None or session_id is None:
                self._unwritten.discard(path)
                return  # unregistered, or acquired when the next session is created
            try:
                await self._run(self._acquire_blocking, path_to_key(path), data, session_id)
            except _TRANSIENT as exc:
                self._unwritten.add(path)
                log.warning("ephemeral %s not written (%r); will retry after the next renew", path, exc)
                return
            self._unwritten.discard(path)

    async def _create_sequential(self, path_prefix: str, data: bytes) -> str:
        session_id = self._connected_session(f"{path_prefix}* not created")
        try:
            key = await self._run(self._claim_sequential_blocking, path_to_key(path_prefix), data, session_id)
        except _TRANSIENT as exc:
            raise UnavailableError(f"consul: sequential node {path_prefix}* not created: {exc!r}") from exc
        return key_to_path(key)

    async def _own_sequential_nodes(self, path_prefix: str, sent: frozenset[bytes]) -> list[str]:
        """Keys whose Session is this session."""
        session_id = self._connected_session(f"keys under {path_prefix}* not read")
        try:
            keys = await self._run(self._own_sequential_keys_blocking, path_to_key(path_prefix), sent, session_id)
        except _TRANSIENT as exc:
            raise UnavailableError(f"consul: keys under {path_prefix}* not read: {exc!r}") from exc
        return [key_to_path(k) for k in keys]

    def _own_sequential_keys_blocking(self, prefix_key: str, sent: frozenset[bytes], session_id: str) -> list[str]:
        parent, _, leaf = prefix_key.rpartition("/")
        # consistent: the leader confirms it still leads before answering, so the lost acquire, if done, is seen.
        _index, entries = self._client.kv.get(prefix_key, recurse=True, consistency="consistent")
        own: list[str] = []
        for entry in entries or []:
            key = str(entry["Key"])
            key_parent, _, name = key.rpartition("/")
            if key_parent != parent or not is_sequential_name(name, leaf):
                continue  # `recurse` is a plain prefix match: also deeper keys and longer names
            if entry.get("Session") == session_id and _entry_bytes(entry) in sent:
                own.append(key)
        return own

    def _connected_session(self, what: str) -> str:
        session_id = self._session_id
        if session_id is None or self._state is not SessionState.CONNECTED:
            raise UnavailableError(f"consul session not connected ({self._state.value}): {what}")
        return session_id

    def _claim_sequential_blocking(self, prefix_key: str, data: bytes, session_id: str) -> str:
        counter_key = _sequence_counter_key(prefix_key)
        for _ in range(_SEQUENCE_ATTEMPTS):
            key = f"{prefix_key}{self._take_sequence_number_blocking(counter_key):0{SEQUENCE_DIGITS}d}"
            if self._client.kv.put(key, data, acquire=session_id):
                return key
            # Held by another session: only after the counter was reset (its parent deleted) under a live node.
            log.warning("sequential key %s is held by another session; taking the next number", key)
        raise consul.ConsulException(f"no free sequential key under {prefix_key!r} in {_SEQUENCE_ATTEMPTS} tries")

    def _take_sequence_number_blocking(self, counter_key: str) -> int:
        """The counter's value, after raising it by one with a check-and-set (the number is ours alone)."""
        for _ in range(_SEQUENCE_ATTEMPTS):
            _index, entry = self._client.kv.get(counter_key)
            number = _counter_value(counter_key, entry)
            cas = int(entry["ModifyIndex"]) if entry is not None else 0  # 0: create only if still missing
            if self._client.kv.put(counter_key, str(number + 1), cas=cas):
                return number
        raise consul.ConsulException(f"sequence counter {counter_key} kept changing in {_SEQUENCE_ATTEMPTS} tries")

    def _acquire_blocking(self, key: str, data: bytes, session_id: str) -> None:
        if self._client.kv.put(key, data, acquire=session_id):
            return
        # Held by another session (e.g. our previous process, not yet expired): take it over.
        _index, entry = self._client.kv.get(key)
        if entry is not None:
            log.warning("replacing key %s held by session %s", key, entry.get("Session"))
            self._client.kv.delete(key, cas=entry["ModifyIndex"])
        if not self._client.kv.put(key, data, acquire=session_id):
            raise consul.ConsulException(f"could not acquire {key} for session {session_id}")

    # ---- persistent nodes and reads -------------------------------------------------------------------
    async def ensure_path(self, path: str) -> None:
        normalize_path(path)  # prefixes are implicit in Consul KV

    async def set_persistent(self, path: str, data: bytes) -> None:
        await self._call(self._client.kv.put, path_to_key(path), data)

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        key = path_to_key(path)
        if recursive:
            # `recurse` is a plain prefix match: delete "a/b/..." and "a/b", never "a/bc".
            await self._call(self._client.kv.delete, key + "/", recurse=True)
        elif await self.get_children(path):
            raise ValueError(f"{path} has children; pass recursive=True")
        await self._call(self._client.kv.delete, key)

    async def get_children(self, path: str) -> list[str]:
        key = path_to_key(path)
        prefix = key + "/" if key else ""
        _index, keys = await self._call(self._client.kv.get, prefix, keys=True, separator="/")
        names = {k[len(prefix) :].rstrip("/") for k in keys or []}
        return sorted(n for n in names if n and n != SEQUENCE_COUNTER_NAME)

    async def get_data(self, path: str) -> bytes | None:
        key = path_to_key(path)
        _index, entry = await self._call(self._client.kv.get, key)
        if entry is not None:
            return bytes(entry.get("Value") or b"")
        return b"" if await self.get_children(path) else None

    async def get_leaves(self, path: str) -> dict[str, bytes]:
        root = normalize_path(path)
        key = path_to_key(root)
        _index, entries = await self._call(self._client.kv.get, key + "/" if key else "", recurse=True)
        return leaves_of(_entries_to_nodes(entries), root)

    # ---- watches ---------------------------------------------------------------------------------------
    async def watch_subtree(self, path: str, listener: WatchListener) -> WatchHandle:
        watch = _ConsulSubtreeWatch(self, normalize_path(path), SubtreeDiffer(listener))
        self._watches.append(watch)
        self.spawn(watch.run())
        return watch

    def _forget_watch(self, watch: _ConsulSubtreeWatch) -> None:
        if watch in self._watches:
            self._watches.remove(watch)

    # ---- helpers ---------------------------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await self._run(fn, *args, **kwargs)
        except _TRANSIENT as exc:
            raise UnavailableError(f"consul {self._config.consul_host}:{self._config.consul_port}: {exc!r}") from exc


class _ConsulSubtreeWatch(WatchHandle):
    """A blocking-query loop on one key prefix; each answer is diffed against the last one."""

    def __init__(self, owner: ConsulDiscovery, root: str, differ: SubtreeDiffer) -> None:
        self._owner = owner
        self._root = root
        key = path_to_key(root)
        self._prefix = key + "/" if key else ""
        self._differ = differ
        self._cancelled = False
        self._index = 0
        self._wake = asyncio.Event()

    def cancel(self) -> None:
        self._cancelled = True
        self._differ.cancelled = True
        self._owner._forget_watch(self)

    def wake(self) -> None:
        """Retry now (after a reconnect) instead of waiting out the error backoff."""
        self._wake.set()

    def _query(self) -> tuple[str, list[dict[str, Any]] | None]:
        wait = f"{self._owner._config.consul_watch_wait_s:g}s"
        result: tuple[str, list[dict[str, Any]] | None] = self._owner._client.kv.get(
            self._prefix, recurse=True, index=self._index or None, wait=wait
        )
        return result

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._cancelled:
            try:
                index, entries = await loop.run_in_executor(self._owner._watch_executor, self._query)
            except _TRANSIENT as exc:
                log.warning("consul watch on %s failed (%r); retrying", self._root, exc)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await within(self._wake.wait(), self._owner._retry_delay_s)
                continue
            new_index = int(index)
            # Consul's rule: an index that goes backwards (e.g. after a restore) means start over.
            self._index = new_index if new_index >= self._index else 0
            if not self._cancelled:
                self._differ.apply(leaves_of(_entries_to_nodes(entries), self._root))
