"""In-memory discovery for standalone mode (no coordination service), seeded from a dict or JSON file.

Everything stays inside this process: registrations are visible to watchers of the same instance only.
Not thread-safe; use from one asyncio loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

from monolith_serving.discovery.base import (
    SEQUENCE_DIGITS,
    Discovery,
    SessionState,
    StateListener,
    SubtreeDiffer,
    WatchHandle,
    WatchListener,
    leaves_of,
    normalize_path,
)
from monolith_serving.discovery.config import DiscoveryConfig


def load_static_nodes(config: DiscoveryConfig) -> dict[str, bytes]:
    """Merge ``static_file`` (JSON object ``path → str | JSON value``) and ``static_nodes``."""
    raw: dict[str, object] = {}
    if config.static_file:
        loaded = json.loads(Path(config.static_file).read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"{config.static_file}: expected a JSON object of path -> data")
        raw.update(loaded)
    raw.update(config.static_nodes)
    nodes: dict[str, bytes] = {}
    for path, value in raw.items():
        text = value if isinstance(value, str) else json.dumps(value)
        nodes[normalize_path(path)] = text.encode()
    return nodes


class StaticDiscovery(Discovery):
    """Always CONNECTED; nodes live in a dict. Intermediate nodes are implicit (as in Consul KV)."""

    def __init__(self, config: DiscoveryConfig | None = None, *, nodes: Mapping[str, bytes] | None = None) -> None:
        self._nodes: dict[str, bytes] = load_static_nodes(config) if config else {}
        self._nodes.update({normalize_path(p): d for p, d in (nodes or {}).items()})
        self._ephemerals: set[str] = set()
        self._sequences: dict[str, int] = {}  # parent path -> its next sequence number
        self._watches: list[_StaticWatch] = []
        self._state = SessionState.SUSPENDED
        self._state_listeners: list[StateListener] = []

    async def start(self) -> None:
        if self._state is SessionState.CONNECTED:
            return
        self._state = SessionState.CONNECTED
        for listener in list(self._state_listeners):
            asyncio.get_running_loop().call_soon(listener, self._state)

    async def stop(self) -> None:
        for path in list(self._ephemerals):
            await self.unregister(path)
        for watch in list(self._watches):
            watch.cancel()

    @property
    def state(self) -> SessionState:
        return self._state

    async def wait_connected(self, timeout_s: float) -> bool:
        return self._state is SessionState.CONNECTED

    def add_state_listener(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        if listener in self._state_listeners:
            self._state_listeners.remove(listener)

    async def register_ephemeral(self, path: str, data: bytes) -> None:
        path = normalize_path(path)
        self._ephemerals.add(path)
        self._write(path, data)

    async def register_ephemeral_sequential(self, path_prefix: str, data: bytes) -> str:
        prefix = normalize_path(path_prefix)
        parent = prefix.rsplit("/", 1)[0] or "/"
        number = self._sequences.get(parent, 0)
        self._sequences[parent] = number + 1
        path = f"{prefix}{number:0{SEQUENCE_DIGITS}d}"
        await self.register_ephemeral(path, data)
        return path

    async def update_ephemeral(self, path: str, data: bytes) -> None:
        path = normalize_path(path)
        if path not in self._ephemerals:
            raise KeyError(f"ephemeral {path} is not registered")
        self._write(path, data)

    async def unregister(self, path: str) -> None:
        path = normalize_path(path)
        self._ephemerals.discard(path)
        await self.delete(path)

    async def ensure_path(self, path: str) -> None:
        normalize_path(path)  # intermediate nodes are implicit

    async def set_persistent(self, path: str, data: bytes) -> None:
        self._write(normalize_path(path), data)

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        path = normalize_path(path)
        below = [p for p in self._nodes if p.startswith(path + "/")]
        if below and not recursive:
            raise ValueError(f"{path} has children; pass recursive=True")
        for p in [path, *below]:
            self._nodes.pop(p, None)
        self._notify()

    async def get_children(self, path: str) -> list[str]:
        prefix = normalize_path(path).rstrip("/") + "/"
        return sorted({p[len(prefix) :].split("/", 1)[0] for p in self._nodes if p.startswith(prefix)})

    async def get_data(self, path: str) -> bytes | None:
        path = normalize_path(path)
        if path in self._nodes:
            return self._nodes[path]
        return b"" if any(p.startswith(path + "/") for p in self._nodes) else None

    async def get_leaves(self, path: str) -> dict[str, bytes]:
        return leaves_of(self._nodes, normalize_path(path))

    async def watch_subtree(self, path: str, listener: WatchListener) -> WatchHandle:
        watch = _StaticWatch(self, normalize_path(path), SubtreeDiffer(listener))
        self._watches.append(watch)
        asyncio.get_running_loop().call_soon(watch.sync)
        return watch

    def _write(self, path: str, data: bytes) -> None:
        self._nodes[path] = data
        self._notify()

    def _notify(self) -> None:
        # Deliver on a later loop iteration, like the networked backends (never inside the writer's call).
        loop = asyncio.get_running_loop()
        for watch in self._watches:
            loop.call_soon(watch.sync)


class _StaticWatch(WatchHandle):
    def __init__(self, owner: StaticDiscovery, root: str, differ: SubtreeDiffer) -> None:
        self._owner = owner
        self._root = root
        self._differ = differ

    def sync(self) -> None:
        self._differ.apply(leaves_of(self._owner._nodes, self._root))

    def cancel(self) -> None:
        self._differ.cancelled = True
        if self in self._owner._watches:
            self._owner._watches.remove(self)
