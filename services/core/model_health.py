"""gRPC health that says whether a model server can answer for every model it hosts: SERVING exactly while each
has an AVAILABLE version (with none hosted, nothing to wait for: SERVING). The PS and the dense server set it after
every change to their versions, so Kubernetes readiness and startup probes wait for the load itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from monolith_serving.core.grpc_server import GrpcServer

logger = logging.getLogger(__name__)


class HostedModel(Protocol):
    def serving(self) -> Any:
        """The version serving now; None when no version is AVAILABLE."""


class ModelHealth:
    """Sets the health of ``services`` (``""`` and each hosted service's name) from ``models()``; logs each change
    naming the models without an AVAILABLE version. Call ``follow`` on the event loop after each change."""

    def __init__(self, models: Callable[[], Mapping[str, HostedModel]], services: Sequence[str], what: str) -> None:
        self._models = models
        self._services = tuple(services)
        self._what = what  # "sub-model", "dense sub-model": how the log lines name a model
        self._lock = asyncio.Lock()  # concurrent changes: the last one to set health reads the latest state
        self._serving: bool | None = None  # what health says now; None until first set
        self._stopped = False

    def ready(self) -> bool:
        return all(model.serving() is not None for model in self._models().values())

    async def follow(self, server: GrpcServer | None) -> None:
        """Sets health to ``ready()``; a no-op without a gRPC server of its own (hosted by a unified server) or
        once ``stop`` began."""
        async with self._lock:
            if server is None or self._stopped:
                return
            serving = self.ready()
            for service in self._services:
                await server.set_serving(serving, service)
            if serving and self._serving is not True:
                logger.info("health SERVING: every %s has an AVAILABLE version", self._what)
            elif not serving and self._serving is not False:
                waiting = sorted(name for name, model in self._models().items() if model.serving() is None)
                logger.warning("health NOT_SERVING: no AVAILABLE version of %s", ", ".join(waiting))
            self._serving = serving

    async def stop(self, server: GrpcServer) -> None:
        """NOT_SERVING for good, before the server drains; a ``follow`` still queued changes nothing."""
        async with self._lock:
            self._stopped = True
            for service in self._services:
                await server.set_serving(False, service)
