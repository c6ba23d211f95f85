"""The v3 agent's layout -> local models step with malformed saved_model declarations (no processes)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from v3_agent_fakes import BZID, LAYOUT, watch_fed_v3_agent

from monolith_serving.agent.saved_model_decl import declaration_for
from monolith_serving.core.zk_paths import saved_model_path
from monolith_serving.discovery import EventKind, WatchEvent

DEEP_LIST = b"[" * 100_000  # any registry writer can create it; json.loads raises RecursionError


@pytest.mark.parametrize("bad", [DEEP_LIST, b'{"a": ' * 50_000, b"{bad"], ids=["deep-list", "deep-object", "bad"])
def test_a_malformed_declaration_skips_only_its_item(
    tmp_path: Path, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with watch_fed_v3_agent(tmp_path / "models.config") as agent:
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

    with caplog.at_level(logging.WARNING, logger="monolith_serving.agent.v3_agent"):
        asyncio.run(scenario())
