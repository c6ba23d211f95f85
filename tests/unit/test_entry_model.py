"""EntryModel: version gating on PS readiness, status, reconfigure, Predict validation.

The embedding lookup is a fake of our own ``EmbeddingLookup`` interface (no network).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from monolith_serving.client.inputs import encode, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.model_state import ENDED_VERSIONS_KEPT, ModelState
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModel, EntryModelConfig
from monolith_serving.entry.ps_client import EmbeddingLookup, LookupResult


class RecordingLookup(EmbeddingLookup):
    """Returns embeddings derived from the fid and remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, list[int]], float]] = []

    async def lookup(
        self,
        version: int,
        fids: Mapping[str, npt.NDArray[np.int64]],
        dims: Mapping[str, int],
        timeout_s: float,
        urgent_s: float | None = None,
    ) -> LookupResult:
        self.calls.append((version, {t: f.tolist() for t, f in fids.items()}, timeout_s))
        values = {t: np.repeat((f % 7).astype(np.float32)[:, None] / 7, dims[t], axis=1) for t, f in fids.items()}
        return LookupResult(values, dict.fromkeys(range(2), version))


class Gate:
    def __init__(self) -> None:
        self.ready: set[int] = set()

    def __call__(self, version: int) -> bool:
        return version in self.ready


def make_model(base: Path, gate: Gate, lookup: EmbeddingLookup | None = None) -> EntryModel:
    return EntryModel(
        config=EntryModelConfig(name="entry", base_path=base / "entry", fetch_ps_timeout_ms=250),
        num_ps=2,
        lookup=lookup or RecordingLookup(),
        ps_ready=gate,
        metrics=EntryMetrics(),
    )


def inputs_for(base: Path, kind: str = "instances", batch: int = 3) -> dict[str, npt.NDArray[np.object_]]:
    from monolith_serving.core.serving_spec import load_serving_spec

    spec = load_serving_spec(base / "entry" / "1")
    examples = random_examples(spec, batch, np.random.default_rng(1))
    return {k: np.array(v, dtype=object) for k, v in encode(spec, kind, examples).items()}


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    write_demo(DemoOptions(out=tmp_path, num_ps=2, rows=50, version=1))
    return tmp_path


def states(model: EntryModel) -> dict[int, ModelState]:
    return {s.version: s.state for s in model.status("entry")}


def test_a_version_is_served_only_once_every_ps_shard_has_it(export: Path) -> None:
    async def scenario() -> None:
        gate = Gate()
        model = make_model(export, gate)
        await model.refresh()
        assert states(model) == {1: ModelState.LOADING}
        with pytest.raises(NotFoundError, match="no version ready"):
            model.resolve("entry", None)
        gate.ready = {1}
        await model.refresh()
        assert states(model) == {1: ModelState.AVAILABLE}
        write_demo(DemoOptions(out=export, num_ps=2, rows=50, version=2))
        await model.refresh()
        # Version 2 waits for the PS; version 1 keeps serving.
        assert states(model) == {2: ModelState.LOADING, 1: ModelState.AVAILABLE}
        assert model.resolve("entry", None).version == 1
        gate.ready = set()  # a PS status flap must not stop the served version
        await model.refresh()
        assert model.resolve("entry", None).version == 1
        gate.ready = {1, 2}
        await model.refresh()
        assert states(model) == {2: ModelState.AVAILABLE, 1: ModelState.END}
        result = await model.predict(name="entry", version=None, signature_name="", inputs=inputs_for(export))
        assert result.version == 2
        with pytest.raises(NotFoundError, match="version 1 is not being served"):
            model.resolve("entry", 1)

    asyncio.run(scenario())


def test_predict_uses_dedup_and_the_ps_timeout_default(export: Path) -> None:
    async def scenario() -> None:
        gate = Gate()
        gate.ready = {1}
        lookup = RecordingLookup()
        model = make_model(export, gate, lookup)
        await model.refresh()
        result = await model.predict(
            name="entry", version=1, signature_name="serving_default", inputs=inputs_for(export)
        )
        assert result.outputs["scores"].shape == (3, 1)
        assert result.ps_versions == {0: 1, 1: 1}
        version, fids, timeout_s = lookup.calls[-1]
        # The budget counts from the request's arrival, so parsing has used a little of it.
        assert version == 1 and 0.2 < timeout_s <= 0.25
        assert all(len(set(f)) == len(f) for f in fids.values())
        await model.predict(name="entry", version=None, signature_name="", inputs=inputs_for(export), timeout_s=0.04)
        assert 0.03 < lookup.calls[-1][2] <= 0.04

    asyncio.run(scenario())


class DeadlineLookup(EmbeddingLookup):
    """Waits out the budget it is given, then fails as the fan-out does when the deadline runs out."""

    async def lookup(
        self,
        version: int,
        fids: Mapping[str, npt.NDArray[np.int64]],
        dims: Mapping[str, int],
        timeout_s: float,
        urgent_s: float | None = None,
    ) -> LookupResult:
        await asyncio.sleep(max(timeout_s, 0.0))
        raise DeadlineExceededError("PS shard 0 (ps_0) lookup failed: deadline passed after 1 attempt(s)")


def test_a_ps_budget_running_out_is_deadline_exceeded_only_when_the_callers_deadline_passed(export: Path) -> None:
    """A proxy ejects entries that answer UNAVAILABLE, never for DEADLINE_EXCEEDED: a caller's own short deadline
    must read as DEADLINE_EXCEEDED, while the entry's fetch_ps_timeout_ms running out (the caller set no deadline)
    is this server failing: UNAVAILABLE."""

    async def scenario() -> None:
        gate = Gate()
        gate.ready = {1}
        model = make_model(export, gate, DeadlineLookup())
        await model.refresh()
        with pytest.raises(DeadlineExceededError):
            await model.predict(
                name="entry", version=None, signature_name="", inputs=inputs_for(export), timeout_s=0.05
            )
        with pytest.raises(UnavailableError, match="deadline passed"):
            await model.predict(name="entry", version=None, signature_name="", inputs=inputs_for(export))

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("inputs", "kwargs", "error", "message"),
    [
        ({}, {}, InvalidArgumentError, "missing input"),
        ({"instances": np.array([1, 2], dtype=np.int64)}, {}, InvalidArgumentError, "must be DT_STRING"),
        ({"bogus": np.array([b""], dtype=object)}, {}, InvalidArgumentError, "unknown input"),
        (
            {"instances": np.array([b""], dtype=object), "examples": np.array([b""], dtype=object)},
            {},
            InvalidArgumentError,
            "exactly one of",
        ),
        ({"example_batch": np.array([b"", b""], dtype=object)}, {}, InvalidArgumentError, "exactly 1 ExampleBatch"),
        ({"instances": np.array([b""], dtype=object)}, {"signature_name": "other"}, InvalidArgumentError, "signature"),
        ({"instances": np.array([b""], dtype=object)}, {"output_filter": ["nope"]}, InvalidArgumentError, "output"),
        ({"instances": np.array([b""], dtype=object)}, {"name": "other"}, NotFoundError, "not served here"),
        ({"instances": np.array([b""], dtype=object)}, {"version": 9}, NotFoundError, "version 9"),
    ],
)
def test_bad_requests(
    export: Path, inputs: dict[str, npt.NDArray[object]], kwargs: dict[str, object], error: type, message: str
) -> None:
    async def scenario() -> None:
        gate = Gate()
        gate.ready = {1}
        model = make_model(export, gate)
        await model.refresh()
        call: dict[str, object] = {"name": "entry", "version": None, "signature_name": "", "inputs": inputs}
        call.update(kwargs)
        with pytest.raises(error, match=message):
            await model.predict(**call)  # type: ignore[arg-type]
        # still serving afterwards
        ok = await model.predict(name="entry", version=None, signature_name="", inputs=inputs_for(export))
        assert ok.outputs["scores"].shape == (3, 1)

    asyncio.run(scenario())


def test_reconfigure_to_nothing_unloads_and_a_bad_version_reports_its_error(export: Path) -> None:
    async def scenario() -> None:
        gate = Gate()
        gate.ready = {1, 3}
        model = make_model(export, gate)
        await model.refresh()
        bad = export / "entry" / "3"
        bad.mkdir()
        (bad / "serving_spec.json").write_text("{not json")
        await model.refresh()
        statuses = {s.version: s for s in model.status("entry")}
        assert statuses[3].state is ModelState.END and statuses[3].error is not None
        assert "not valid JSON" in statuses[3].error.message
        assert model.resolve("entry", None).version == 1  # the good version keeps serving
        await model.reconfigure(None)
        with pytest.raises(NotFoundError, match="not served here"):
            model.resolve("entry", None)
        with pytest.raises(NotFoundError):
            model.status("entry")

    asyncio.run(scenario())


def test_only_the_newest_ended_versions_stay_in_the_status(export: Path) -> None:
    async def scenario() -> None:
        gate = Gate()
        model = make_model(export, gate)
        last = ENDED_VERSIONS_KEPT + 3
        gate.ready = set(range(1, last + 1))
        await model.refresh()
        for version in range(2, last + 1):  # a new version every "hour"; each one retires the one before
            shutil.copytree(export / "entry" / "1", export / "entry" / str(version))
            await model.refresh()
        ended = [v for v, state in states(model).items() if state is ModelState.END]
        assert states(model)[last] is ModelState.AVAILABLE
        assert ended == list(range(last - 1, last - 1 - ENDED_VERSIONS_KEPT, -1))

    asyncio.run(scenario())


def test_a_reload_the_entry_cannot_serve_from_is_refused_and_the_model_keeps_serving(export: Path) -> None:
    (export / "empty").mkdir()  # a folder with no version (like "/")
    served = EntryModelConfig(name="entry", base_path=export / "entry", fetch_ps_timeout_ms=250)
    cases = [
        (export / "missing", (), NotFoundError, "does not exist or is not a folder"),
        (export / "entry" / "1" / "serving_spec.json", (), NotFoundError, "does not exist or is not a folder"),
        (Path("/tmp/a\x00b"), (), NotFoundError, "does not exist or is not a folder"),
        (export / "empty", (), FailedPreconditionError, r"nothing to serve .*\(no version the policy wants\)"),
        (export / "ps_0", (), FailedPreconditionError, r"nothing to serve .*version 1: .*serving_spec\.json"),
        (export / "entry", (("stable", 999),), FailedPreconditionError, "label 'stable' points at version 999"),
    ]

    async def scenario() -> None:
        gate = Gate()
        gate.ready = {1}
        model = make_model(export, gate)
        await model.refresh()
        for base_path, labels, error, message in cases:
            bad = dataclasses.replace(served, base_path=base_path, version_labels=labels)
            with pytest.raises(error, match=message) as info:
                await model.reconfigure(bad)
            assert "'entry'" in info.value.message
            if error is NotFoundError:
                assert repr(str(base_path)) in info.value.message
            assert model.config == served  # the previous config is kept ...
            assert states(model) == {1: ModelState.AVAILABLE}
            result = await model.predict(name="entry", version=None, signature_name="", inputs=inputs_for(export))
            assert result.version == 1  # ... and still serving
        # What the checks let through: a label on the served version, then the same label kept once the
        # version it names is gone; the same folder under another name.
        labelled = dataclasses.replace(served, version_labels=(("stable", 1),))
        await model.reconfigure(labelled)
        write_demo(DemoOptions(out=export, num_ps=2, rows=50, version=2))
        gate.ready = {1, 2}
        await model.refresh()
        assert states(model) == {2: ModelState.AVAILABLE, 1: ModelState.END}
        await model.reconfigure(dataclasses.replace(labelled, policy=VersionPolicy(PolicyKind.LATEST, 2)))
        await model.reconfigure(dataclasses.replace(served, name="renamed"))
        assert model.resolve("renamed", None).version == 2

    asyncio.run(scenario())


def test_an_entry_serving_nothing_takes_a_folder_whose_versions_come_later(export: Path) -> None:
    async def scenario() -> None:
        model = make_model(export, Gate())  # version 1 loads but never gets served: the PS is not ready
        await model.refresh()
        later = EntryModelConfig(name="entry", base_path=export / "later", fetch_ps_timeout_ms=250)
        with pytest.raises(NotFoundError, match="later"):
            await model.reconfigure(later)  # not there at all: refused even so
        (export / "later").mkdir()
        await model.reconfigure(later)
        assert model.config == later and states(model) == {}
        # Started on a folder that is not there yet (allowed at start), a reload may keep it.
        missing = EntryModelConfig(name="entry", base_path=export / "missing")
        lookup = RecordingLookup()
        waiting = EntryModel(config=missing, num_ps=2, lookup=lookup, ps_ready=Gate(), metrics=EntryMetrics())
        await waiting.refresh()
        await waiting.reconfigure(dataclasses.replace(missing, policy=VersionPolicy(PolicyKind.ALL)))
        assert waiting.config is not None and waiting.config.policy.kind is PolicyKind.ALL

    asyncio.run(scenario())
