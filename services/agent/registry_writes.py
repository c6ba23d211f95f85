"""A Discovery decorator that records when the agent's registry writes succeed (for the freshness gauge).

Wraps any backend without knowing its client: every call is forwarded; a write call that returns
while the session is CONNECTED counts as a successful write. Registrations made while disconnected are
queued by the backend and do not count until a later write succeeds.
"""

from __future__ import annotations

from monolith_serving.agent.metrics import AgentMetrics
from monolith_serving.discovery.base import (
    Discovery,
    SessionState,
    StateListener,
    WatchHandle,
    WatchListener,
)

__all__ = ["WriteTrackingDiscovery"]


class WriteTrackingDiscovery(Discovery):
    def __init__(self, inner: Discovery, metrics: AgentMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def _wrote(self) -> None:
        if self._inner.state is SessionState.CONNECTED:
            self._metrics.record_registry_write()

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    @property
    def state(self) -> SessionState:
        return self._inner.state

    async def wait_connected(self, timeout_s: float) -> bool:
        return await self._inner.wait_connected(timeout_s)

    def add_state_listener(self, listener: StateListener) -> None:
        self._inner.add_state_listener(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        self._inner.remove_state_listener(listener)

    async def register_ephemeral(self, path: str, data: bytes) -> None:
        await self._inner.register_ephemeral(path, data)
        self._wrote()

    async def register_ephemeral_sequential(self, path_prefix: str, data: bytes) -> str:
        path = await self._inner.register_ephemeral_sequential(path_prefix, data)
        self._wrote()
        return path

    async def update_ephemeral(self, path: str, data: bytes) -> None:
        await self._inner.update_ephemeral(path, data)
        self._wrote()

    async def unregister(self, path: str) -> None:
        await self._inner.unregister(path)
        self._wrote()

    async def ensure_path(self, path: str) -> None:
        await self._inner.ensure_path(path)
        self._wrote()

    async def set_persistent(self, path: str, data: bytes) -> None:
        await self._inner.set_persistent(path, data)
        self._wrote()

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        await self._inner.delete(path, recursive=recursive)
        self._wrote()

    async def get_children(self, path: str) -> list[str]:
        return await self._inner.get_children(path)

    async def get_data(self, path: str) -> bytes | None:
        return await self._inner.get_data(path)

    async def get_leaves(self, path: str) -> dict[str, bytes]:
        return await self._inner.get_leaves(path)

    async def watch_subtree(self, path: str, listener: WatchListener) -> WatchHandle:
        return await self._inner.watch_subtree(path, listener)
