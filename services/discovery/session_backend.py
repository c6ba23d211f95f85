"""What the session-based backends (ZooKeeper, Consul) share: the session state and its listeners, the desired
ephemeral registrations, background tasks and the blocking-call executor.

A backend supplies how an ephemeral is written (``_write_ephemeral``) and deleted (``_delete_ephemeral``), how
its session is kept, and the reads and watches; this class keeps what a caller sees the same on both.

An unregister the server did not see (disconnected, or the delete failed) stays pending until a delete succeeds
or the session is LOST: a session that survives an outage keeps its ephemerals, and nothing else removes them.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from monolith_serving.core.aio_wait import event_set_within
from monolith_serving.discovery.base import (
    Discovery,
    SequentialCreates,
    SessionState,
    StateListener,
    normalize_path,
    safe_call,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class SessionBackend(Discovery, abc.ABC):
    """A discovery client whose ephemerals live as long as one server-side session."""

    def __init__(self, *, backend: str, executor: ThreadPoolExecutor) -> None:
        self._backend = backend  # names the backend in log lines
        self._executor = executor
        self._state = SessionState.SUSPENDED
        self._connected = asyncio.Event()
        self._state_listeners: list[StateListener] = []
        # Desired state, touched only on the loop: written on connect, re-written after a session loss.
        self._ephemerals: dict[str, bytes] = {}
        # Unregistered paths this session may still hold; touched only on the loop.
        self._pending_deletes: set[str] = set()
        self._ephemeral_lock = asyncio.Lock()
        self._sequential = SequentialCreates()
        self._tasks: set[asyncio.Future[None]] = set()
        self._started = False
        self._stopped = False

    # ---- state -----------------------------------------------------------------------------------------
    @property
    def state(self) -> SessionState:
        return self._state

    async def wait_connected(self, timeout_s: float) -> bool:
        return await event_set_within(self._connected, timeout_s)

    def add_state_listener(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        if listener in self._state_listeners:
            self._state_listeners.remove(listener)

    def _set_state(self, state: SessionState) -> None:
        """Records a transition and tells the listeners (on the loop); a repeat of the current state is no event."""
        if state is self._state:
            return
        previous, self._state = self._state, state
        if state is SessionState.LOST:
            self._pending_deletes.clear()  # the lost session's ephemerals died with it
        if state is SessionState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        log.info("%s session %s -> %s", self._backend, previous.value, state.value)
        for listener in list(self._state_listeners):
            safe_call(listener, state)

    # ---- ephemerals ------------------------------------------------------------------------------------
    async def register_ephemeral(self, path: str, data: bytes) -> None:
        path = normalize_path(path)
        self._ephemerals[path] = data
        self._pending_deletes.discard(path)
        await self._write_ephemeral(path)

    async def register_ephemeral_sequential(self, path_prefix: str, data: bytes) -> str:
        prefix = normalize_path(path_prefix)
        path = await self._sequential.create(
            prefix,
            data,
            create=lambda: self._create_sequential(prefix, data),
            find_own=lambda sent: self._unregistered_own_nodes(prefix, sent),
            release=self.unregister,
        )
        # A session lost right after the create took the node along, and the reconnect's reconcile may have run
        # before it was registered: registering writes it once more, back at the same path (nothing to do when it
        # is there).
        await self.register_ephemeral(path, data)
        return path

    async def update_ephemeral(self, path: str, data: bytes) -> None:
        path = normalize_path(path)
        if path not in self._ephemerals:
            raise KeyError(f"ephemeral {path} is not registered")
        self._ephemerals[path] = data
        await self._write_ephemeral(path)

    async def unregister(self, path: str) -> None:
        path = normalize_path(path)
        self._ephemerals.pop(path, None)
        self._pending_deletes.add(path)
        await self._delete_ephemeral(path)

    async def _unregistered_own_nodes(self, path_prefix: str, sent: frozenset[bytes]) -> list[str]:
        """This session's sequential nodes under ``path_prefix`` holding one of ``sent`` that are no registration
        of ours: what creates whose reply was lost made."""
        found = await self._own_sequential_nodes(path_prefix, sent)
        return [p for p in found if p not in self._ephemerals and p not in self._pending_deletes]

    @abc.abstractmethod
    async def _create_sequential(self, path_prefix: str, data: bytes) -> str:
        """Creates the next sequential node under ``path_prefix`` as this session's ephemeral and returns its path;
        UnavailableError when there is no session or the server cannot be reached."""

    @abc.abstractmethod
    async def _own_sequential_nodes(self, path_prefix: str, sent: frozenset[bytes]) -> list[str]:
        """The sequential nodes under ``path_prefix`` this session holds whose data is one of ``sent``;
        UnavailableError when they cannot be read."""

    @abc.abstractmethod
    async def _write_ephemeral(self, path: str) -> None:
        """Writes the registered data of ``path`` as this session's ephemeral, if there is a session now;
        otherwise leaves it to ``_reconcile_all_ephemerals`` after the next connect. Never raises for an
        unreachable server."""

    @abc.abstractmethod
    async def _delete_ephemeral(self, path: str) -> None:
        """Deletes ``path`` if it is still pending (not registered again) and held by this session, then drops it
        from ``_pending_deletes``; leaves it pending when the server cannot be reached now (the next reconnect
        retries). Never raises for an unreachable server."""

    async def _reconcile_all_ephemerals(self) -> None:
        """Brings the server to the desired state: pending deletes first, then every registration."""
        for path in list(self._pending_deletes):
            await self._delete_ephemeral(path)
        for path in list(self._ephemerals):
            await self._write_ephemeral(path)

    # ---- helpers ---------------------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Runs a background task on the loop, keeping a reference until it ends (cancelled on stop)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
