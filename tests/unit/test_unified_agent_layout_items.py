"""Which layout items a v3 (unified) agent hosts: ``entry``, ``ps_<i>`` and ``dense_<i>`` sub_graphs, as Monolith's
unified container hosts every sub_graph it is given (no processes; the layout and declarations are fed as watch
events)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from v3_agent_fakes import BZID, LAYOUT, watch_fed_v3_agent

from monolith_serving.agent.saved_model_decl import declaration_for
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.zk_paths import saved_model_path
from monolith_serving.discovery import EventKind, WatchEvent


def test_dense_sub_graphs_are_hosted_and_only_unknown_ones_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with watch_fed_v3_agent(tmp_path / "models.config") as agent:
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

    with caplog.at_level(logging.WARNING, logger="monolith_serving.agent.v3_agent"):
        asyncio.run(scenario())
