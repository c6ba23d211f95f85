"""A v3 (unified) agent with no runtime and no registry, for tests that feed it watch events and read what it
would host (``desired_models``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

from monolith_serving.agent.config import ContainerIdentity, ServerKind, ServerLaunchSpec
from monolith_serving.agent.layout_filter import LayoutFilterSet
from monolith_serving.agent.runtime import AgentRuntime
from monolith_serving.agent.v3_agent import V3Agent
from monolith_serving.core.zk_paths import layout_path
from monolith_serving.discovery import ContainerServiceInfo

BZID = "bz"
LAYOUT = layout_path(BZID, "default")


@asynccontextmanager
async def watch_fed_v3_agent(model_config_path: Path) -> AsyncIterator[V3Agent]:
    """An agent of container ``c``/``1`` on layout ``LAYOUT`` of ``BZID``, no layout filters; its local server
    client is closed on exit. Enter it in the running loop: that client's gRPC aio channel belongs to it."""
    agent = V3Agent(
        identity=ContainerIdentity(
            bzid=BZID, layout_path=LAYOUT, ctx_cluster="c", ctx_id="1", info=ContainerServiceInfo()
        ),
        spec=ServerLaunchSpec(
            kind=ServerKind.UNIFIED, name="unified", grpc_port=1, model_config_path=model_config_path, models=()
        ),
        filters=LayoutFilterSet(()),
        runtime=cast(AgentRuntime, None),  # desired_models reads only the watched nodes
        status_interval_s=1.0,
    )
    try:
        yield agent
    finally:
        await agent._client.close()
