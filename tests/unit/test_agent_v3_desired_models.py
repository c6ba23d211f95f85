"""The v3 agent's layout -> local models step with malformed saved_model declarations (no processes)."""

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
from monolith_serving.core.zk_paths import layout_path, saved_model_path
from monolith_serving.discovery import ContainerServiceInfo, EventKind, WatchEvent

BZID = "bz"
LAYOUT = layout_path(BZID, "default")
DEEP_LIST = b"[" * 100_000  # any registry writer can create it; json.loads raises RecursionError


@pytest.mark.parametrize("bad", [DEEP_LIST, b'{"a": ' * 50_000, b"{bad"], ids=["deep-list", "deep-object", "bad"])
def test_a_malformed_declaration_skips_only_its_item(
    tmp_path: Path, bad: bytes, caplog: pytest.LogCaptureFixture
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
            good = declaration_for(Path("/export/m"), "ps_1").to_json()
            for sub_graph, data in (("entry", bad), ("ps_0", bad), ("ps_1", good)):
                agent._on_decl_event(WatchEvent(EventKind.ADDED, saved_model_path(BZID, "m", sub_graph), data))
            for item in ("m:entry", "m:ps_0", "m:ps_1"):
                agent._on_layout_event(WatchEvent(EventKind.ADDED, f"{LAYOUT}/{item}", b""))
            for _ in range(2):  # every reconcile retry: the same answer, the warnings logged once
                assert [m.name for m in agent.desired_models()] == ["m:ps_1"]
            warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 2 and all("saved_model declaration" in w for w in warnings), warnings
            fixed = declaration_for(Path("/export/m"), "entry").to_json()
            agent._on_decl_event(WatchEvent(EventKind.CHANGED, saved_model_path(BZID, "m", "entry"), fixed))
            assert [m.name for m in agent.desired_models()] == ["m:entry", "m:ps_1"]
        finally:
            await agent._client.close()

    with caplog.at_level(logging.WARNING, logger="monolith_serving.agent.v3_agent"):
        asyncio.run(scenario())
