"""The entry behaviour the model manager's rollout relies on: a reload to a new version policy of the same
model keeps the served version serving until the new one is ready (TF Serving's availability-preserving
reload), so the entry phase of a rollout never fails a request."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import pytest
from entry_fakes import NoLookup

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import NotFoundError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModel, EntryModelConfig


def test_reload_to_a_new_version_keeps_the_old_one_serving_until_the_new_one_is_ready(tmp_path: Path) -> None:
    for version in (1, 2):
        write_demo(DemoOptions(out=tmp_path, num_ps=2, rows=10, version=version, files_per_partition=1))
    ready = {1}
    config = EntryModelConfig("entry", tmp_path / "entry", VersionPolicy(PolicyKind.SPECIFIC, versions=(1,)))
    model = EntryModel(config=config, num_ps=2, lookup=NoLookup(), ps_ready=ready.__contains__, metrics=EntryMetrics())

    async def scenario() -> None:
        await model.refresh()
        assert model.served_versions == (1,)
        to_2 = dataclasses.replace(config, policy=VersionPolicy(PolicyKind.SPECIFIC, versions=(2,)))
        await model.reconfigure(to_2)
        assert model.served_versions == (1,)  # 2 is loaded but its PS rows are not everywhere yet
        assert model.resolve("entry", None).version == 1
        ready.add(2)
        await model.refresh()
        assert model.served_versions == (2,)
        elsewhere = dataclasses.replace(config, base_path=tmp_path / "elsewhere")
        with pytest.raises(NotFoundError, match="elsewhere"):  # a folder that is not there: refused, 2 serves on
            await model.reconfigure(elsewhere)
        assert model.served_versions == (2,)
        shutil.copytree(tmp_path / "entry" / "1", tmp_path / "elsewhere" / "1")
        await model.reconfigure(elsewhere)
        served = model.version(1)  # another model folder: nothing carries over
        assert model.served_versions == (1,) and served is not None and served.path == tmp_path / "elsewhere" / "1"

    asyncio.run(scenario())
