"""Which layout items a v3 (unified) agent hosts: ``entry``, ``ps_<i>`` and ``dense_<i>`` sub_graphs, as Monolith's
unified container hosts every sub_graph it is given (no processes; the layout and declarations are fed as watch
events)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import cast

import pytest

from monolith_serving.agent.config import ContainerIdentity, ServerKind, ServerLaunchSpec
from monolith_serving.agent.layout_filter import LayoutFilterSet
from monolith_serving.agent.runtime import AgentRuntime
from monolith_serving.agent.saved_model_decl import declaration_for
from monolith_serving.agent.v3_agent import V3Agent
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.zk_paths import layout_path, saved_model_path
from monolith_serving.discovery import ContainerServiceInfo, EventKind, WatchEvent

BZID = "bz"
LAYOUT = layout_path(BZID, "default")


def test_dense_sub_graphs_are_hosted_and_only_unknown_ones_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        agent = V3Agent(
            identity=ContainerIdentity(
                bzid=BZID, layout_path=LAYOUT, ctx_cluster="c", ctx_id="1", info=ContainerServiceInfo()
            ),
            spec=ServerLaunchSpec(
                kind=ServerKind.UNIFIED,
                name="unified",
                grpc_port=1,
                model_config_path=tmp_path / "models.config",
                models=(),
            ),
            filters=LayoutFilterSet(()),
            runtime=cast(AgentRuntime, None),  # desired_models reads only the watched nodes
            status_interval_s=1.0,
        )
        try:
            sub_graphs = ("entry", "ps_0", "dense_0", "other")
            for sub_graph in sub_graphs:
                data = declaration_for(Path("/export/m"), sub_graph).to_json()
                agent._on_decl_event(WatchEvent(EventKind.ADDED, saved_model_path(BZID, "m", sub_graph), data))
                agent._on_layout_event(WatchEvent(EventKind.ADDED, f"{LAYOUT}/m:{sub_graph}", b""))
            desired = agent.desired_models()
            assert [m.name for m in desired] == ["m:dense_0", "m:entry", "m:ps_0"]
            latest_once = VersionPolicy(PolicyKind.LATEST_ONCE)  # as ctl decl declares every sub_graph but the entry
            assert (desired[0].base_path, desired[0].policy) == ("/export/m/dense_0", latest_once)
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and "m:other skipped" in warnings[0], warnings
        finally:
            await agent._client.close()

    with caplog.at_level(logging.WARNING, logger="monolith_serving.agent.v3_agent"):
        asyncio.run(scenario())
