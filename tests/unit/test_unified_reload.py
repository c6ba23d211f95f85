"""A unified container's reload is one change: a caller that stops waiting between the PS part and the entry part
must not leave the container with its PS part applied and its entry part not."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from monolith_serving.entry.model import EntryModelConfig
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2
from monolith_serving.ps.config import SubModelConfig
from monolith_serving.unified.server import UnifiedConfig, UnifiedServer


def test_a_reload_whose_caller_gives_up_during_the_ps_part_still_applies_the_entry_part(tmp_path: Path) -> None:
    (tmp_path / "ps_0").mkdir()
    (tmp_path / "entry").mkdir()
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="demo:ps_0", base_path=str(tmp_path / "ps_0"))
    config.model_config_list.config.add(name="demo:entry", base_path=str(tmp_path / "entry"))

    async def scenario() -> None:
        server = UnifiedServer(UnifiedConfig(port=0, host="127.0.0.1", agent_address="127.0.0.1:1"))
        ps_loading = asyncio.Event()
        ps_may_finish = asyncio.Event()
        applied: list[str] = []

        async def slow_ps_reload(models: Sequence[SubModelConfig], *, fresh: bool = True) -> None:
            ps_loading.set()
            await ps_may_finish.wait()
            applied.append("ps: " + ",".join(m.name for m in models))

        async def entry_apply(model: EntryModelConfig | None) -> None:
            applied.append(f"entry: {model.name if model else None}")

        server.ps.reload = slow_ps_reload  # type: ignore[method-assign]
        server.entry.apply = entry_apply  # type: ignore[method-assign]
        caller = asyncio.create_task(server.reload(config))
        await ps_loading.wait()
        caller.cancel()  # the client's deadline passed while the PS part loads
        with pytest.raises(asyncio.CancelledError):
            await caller
        ps_may_finish.set()
        for _ in range(100):
            if len(applied) == 2:
                break
            await asyncio.sleep(0.01)
        assert applied == ["ps: demo:ps_0", "entry: demo:entry"]
        await server.stop()

    asyncio.run(scenario())
