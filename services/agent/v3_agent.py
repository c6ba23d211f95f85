"""The v3 agent (agent_version 3, deploy_type unified): serve what the layout says.

- Watches ``/{bzid}/layouts/{layout}`` and ``/{bzid}/saved_models``. Each layout item
  ``{model}:{sub_graph}`` accepted by ``layout_filters`` and declared under saved_models becomes a model
  ``{model}:{sub_graph}`` of the local server; an item without a declaration (or with a bad one) is
  skipped and logged, and picked up as soon as it is declared.
- When that set changes: rewrite the child's model config file (so a restarted child loads the same)
  and make the running child apply it (HandleReloadConfigRequest).
- Every ``update_model_status_interval``: keep the ephemeral ``/{bzid}/binding/{model}/{sub_graph}:
  {ctx_cluster}:{ctx_id}`` nodes equal to the set of locally AVAILABLE models.
- Publishes ``/{bzid}/container_service/{ctx_cluster}:{ctx_id}`` (addresses of this container).

The local server is one ``monolith-serving unified`` process hosting the accepted ``entry``, ``ps_<i>`` and
``dense_<i>`` sub_graphs behind one gRPC address, as Monolith's unified container hosts every sub_graph as model
``{model}:{sub_graph}`` (its entry finds PS and dense replicas through this agent's HeartBeat); other sub_graphs,
and entries beyond the first (an entry core serves one model), are skipped with a warning.
Each step runs isolated: a failure is logged with its traceback and retried on the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from monolith_serving.agent.config import ContainerIdentity, ModelEntry, ServerLaunchSpec
from monolith_serving.agent.layout_filter import LayoutFilterSet
from monolith_serving.agent.local_server import LocalServerClient
from monolith_serving.agent.model_config_writer import write_child_files, write_model_config
from monolith_serving.agent.runtime import AgentRuntime
from monolith_serving.agent.saved_model_decl import SavedModelDecl
from monolith_serving.agent.supervisor import ChildSpec
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.model_state import ModelState
from monolith_serving.core.zk_paths import (
    binding_path,
    container_service_path,
    parse_layout_item_name,
    saved_models_root,
)
from monolith_serving.discovery.base import EventKind, SessionState, WatchEvent, WatchHandle
from monolith_serving.unified.routing import HOSTED_SUB_GRAPHS, Side, side_of

__all__ = ["V3Agent"]

log = logging.getLogger(__name__)

_COALESCE_S = 0.2


class V3Agent:
    """``start()`` launches the local server and begins following the layout; ``stop()`` is idempotent."""

    def __init__(
        self,
        *,
        identity: ContainerIdentity,
        spec: ServerLaunchSpec,
        filters: LayoutFilterSet,
        runtime: AgentRuntime,
        status_interval_s: float,
    ) -> None:
        self._id = identity
        self._spec = spec
        self._filters = filters
        self._runtime = runtime
        self._interval_s = status_interval_s
        self._client = LocalServerClient(f"127.0.0.1:{spec.grpc_port}")
        self._layout_items: set[str] = set()  # leaf names "{model}:{sub_graph}"
        self._declarations: dict[tuple[str, str], bytes] = {}
        self._applied: tuple[ModelEntry, ...] | None = None
        self._bound: set[tuple[str, str]] = set()
        self._warned: set[tuple[str, str, str]] = set()  # (model, sub_graph, reason) logged once
        self._dirty = asyncio.Event()
        self._handles: list[WatchHandle] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    @property
    def applied_models(self) -> tuple[ModelEntry, ...]:
        return self._applied or ()

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._runtime.start()
        write_model_config(self._spec.model_config_path, ())
        write_child_files(self._spec.files)
        supervisor = self._runtime.supervisor
        await supervisor.start(
            ChildSpec(name=self._spec.name, argv=tuple(self._spec.argv()), port=self._spec.grpc_port)
        )
        await supervisor.wait_ready(self._spec.name, self._runtime.options.child_ready_timeout_s)
        discovery = self._runtime.discovery
        path = container_service_path(self._id.bzid, self._id.ctx_cluster, self._id.ctx_id)
        await discovery.register_ephemeral(path, self._id.info.to_json())
        log.info("container %s:%s follows layout %s", self._id.ctx_cluster, self._id.ctx_id, self._id.layout_path)
        # Declarations first: the first layout read then finds them (no spurious "not declared").
        self._handles.append(await discovery.watch_subtree(saved_models_root(self._id.bzid), self._on_decl_event))
        self._handles.append(await discovery.watch_subtree(self._id.layout_path, self._on_layout_event))
        self._dirty.set()
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="v3-layout-reconcile"))
        self._tasks.append(asyncio.create_task(self._binding_loop(), name="v3-bindings"))

    async def stop(self) -> None:
        """Remove bindings and the container node first, drain, then stop the local server."""
        if self._stopped:
            return
        self._stopped = True
        self._runtime.supervisor.hold_restarts()
        for handle in self._handles:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        discovery = self._runtime.discovery
        try:
            for model, sub_graph in sorted(self._bound):
                await discovery.unregister(self._binding(model, sub_graph))
            self._bound.clear()
            await discovery.unregister(container_service_path(self._id.bzid, self._id.ctx_cluster, self._id.ctx_id))
        except Exception:
            log.exception("deregistering failed; ephemeral nodes vanish with the session")
        self._runtime.metrics.bindings.set(0)
        await asyncio.sleep(self._runtime.options.drain_s)
        await self._runtime.stop()
        await self._client.close()

    # ---- watches (on the loop; must not block) ---------------------------------------------------------
    def _on_layout_event(self, event: WatchEvent) -> None:
        parent, _, name = event.path.rpartition("/")
        if parent != self._id.layout_path:
            return
        if event.kind is EventKind.REMOVED:
            self._layout_items.discard(name)
        else:
            self._layout_items.add(name)
        self._dirty.set()

    def _on_decl_event(self, event: WatchEvent) -> None:
        parts = event.path.split("/")
        if len(parts) != 5:
            return  # a model folder without sub_graphs, or something deeper: not a declaration
        key = (parts[3], parts[4])
        if event.kind is EventKind.REMOVED:
            self._declarations.pop(key, None)
        else:
            self._declarations[key] = event.data
        self._dirty.set()

    # ---- layout -> local models ------------------------------------------------------------------------
    def _warn_once(self, model: str, sub_graph: str, reason: str) -> None:
        if (model, sub_graph, reason) not in self._warned:
            self._warned.add((model, sub_graph, reason))
            log.warning("layout item %s:%s skipped: %s", model, sub_graph, reason)

    def desired_models(self) -> tuple[ModelEntry, ...]:
        """The accepted, declared, hostable layout items as local models, sorted by name."""
        entries: list[ModelEntry] = []
        entry_name: str | None = None
        for name in sorted(self._layout_items):
            try:
                model, sub_graph = parse_layout_item_name(name)
            except InvalidArgumentError as exc:
                self._warn_once(name, "", exc.message)
                continue
            if not self._filters.accepts(model, sub_graph):
                continue
            side = side_of(name)
            if side is None:
                self._warn_once(model, sub_graph, f"a unified container hosts {HOSTED_SUB_GRAPHS} sub_graphs only")
                continue
            if side is Side.ENTRY and entry_name is not None:
                self._warn_once(model, sub_graph, f"a unified container hosts one entry and serves {entry_name}")
                continue
            data = self._declarations.get((model, sub_graph))
            if data is None:
                self._warn_once(
                    model,
                    sub_graph,
                    f"no saved_model declaration at {saved_models_root(self._id.bzid)}/{model}/{sub_graph}",
                )
                continue
            try:
                decl = SavedModelDecl.from_json(data)
            except InvalidArgumentError as exc:
                self._warn_once(model, sub_graph, exc.message)
                continue
            entries.append(ModelEntry(name=name, base_path=decl.model_base_path, policy=decl.policy))
            if side is Side.ENTRY:
                entry_name = name
        hosted = {tuple(e.name.split(":", 1)) for e in entries}
        self._warned = {w for w in self._warned if (w[0], w[1]) not in hosted}  # warn again if it breaks again
        return tuple(entries)

    async def reconcile(self) -> None:
        """Apply the layout to the local server if what it should host changed."""
        desired = self.desired_models()
        self._runtime.metrics.layout_size.set(len(desired))
        if desired == self._applied:
            return
        config = write_model_config(self._spec.model_config_path, desired)
        log.info("hosting %d models: %s", len(desired), ", ".join(m.name for m in desired) or "(none)")
        await self._client.reload(config)
        self._applied = desired

    async def _reconcile_loop(self) -> None:
        while True:
            await self._dirty.wait()
            # Coalesce a burst of watch events (initial reads, a ctl pub of many items) into one reload.
            await asyncio.sleep(_COALESCE_S)
            self._dirty.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("applying the layout failed; retrying in %.1f s", self._interval_s)
                await asyncio.sleep(self._interval_s)
                self._dirty.set()

    # ---- local states -> bindings ----------------------------------------------------------------------
    def _binding(self, model: str, sub_graph: str) -> str:
        return binding_path(self._id.bzid, model, sub_graph, self._id.ctx_cluster, self._id.ctx_id)

    async def _available(self, entry: ModelEntry) -> bool:
        try:
            return ModelState.AVAILABLE in await self._client.model_states(entry.name)
        except Exception as exc:
            log.debug("status of %s unavailable: %r", entry.name, exc)
            return False

    async def update_bindings(self) -> None:
        """Register bindings of AVAILABLE models, remove the others."""
        available: set[tuple[str, str]] = set()
        for entry in self.applied_models:
            if await self._available(entry):
                model, _, sub_graph = entry.name.partition(":")
                available.add((model, sub_graph))
        discovery = self._runtime.discovery
        for model, sub_graph in sorted(available - self._bound):
            await discovery.register_ephemeral(self._binding(model, sub_graph), b"")
            self._bound.add((model, sub_graph))
            log.info("bound %s:%s", model, sub_graph)
        for model, sub_graph in sorted(self._bound - available):
            await discovery.unregister(self._binding(model, sub_graph))
            self._bound.discard((model, sub_graph))
            log.info("unbound %s:%s", model, sub_graph)
        self._runtime.metrics.bindings.set(len(self._bound))
        self._runtime.metrics.registration_ready.set(
            1 if self._runtime.discovery.state is SessionState.CONNECTED else 0
        )

    async def _binding_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.update_bindings()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("binding step failed")
            await asyncio.sleep(max(0.0, self._interval_s - (time.monotonic() - started)))
