"""The unified server's split of a ModelServerConfig and its dispatch of RPCs by model name."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    predict_pb2,
)
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2
from monolith_serving.unified.routing import Side, side_of, split_model_server_config
from monolith_serving.unified.servicer import UnifiedModelServicer, UnifiedPredictionServicer


def _config(*names: str) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.SetInParent()
    for name in names:
        item = config.model_config_list.config.add(name=name, base_path=f"/export/{name.replace(':', '/')}")
        item.model_version_policy.latest.num_versions = 1
    return config


@pytest.mark.parametrize(
    ("name", "side"),
    [
        ("demo:ps_0", Side.PS),
        ("ps_12", Side.PS),
        ("demo:entry", Side.ENTRY),
        ("entry", Side.ENTRY),
        ("demo:dense_0", Side.DENSE),
        ("dense_1", Side.DENSE),
        ("demo:dense_x", None),
        ("demo:dense", None),
        ("demo:ps_x", None),
        ("demo:entry2", None),
    ],
)
def test_side_of(name: str, side: Side | None) -> None:
    assert side_of(name) is side


def test_split_keeps_order_and_fields_per_side() -> None:
    config = _config("demo:ps_1", "demo:dense_0", "demo:entry", "demo:ps_3")
    split = split_model_server_config(config)
    assert [m.name for m in split.ps.model_config_list.config] == ["demo:ps_1", "demo:ps_3"]
    assert [m.name for m in split.dense.model_config_list.config] == ["demo:dense_0"]
    assert [m.name for m in split.entry.model_config_list.config] == ["demo:entry"]
    assert split.entry.model_config_list.config[0] == config.model_config_list.config[2]
    assert split.dense.model_config_list.config[0] == config.model_config_list.config[1]


def test_split_of_one_side_leaves_the_other_an_explicit_empty_list() -> None:
    split = split_model_server_config(_config("demo:ps_0"))
    for part in (split.entry, split.dense):
        assert part.WhichOneof("config") == "model_config_list"
        assert list(part.model_config_list.config) == []
    empty = split_model_server_config(_config())
    assert empty.ps.WhichOneof("config") == "model_config_list" and not empty.ps.model_config_list.config


def test_split_refuses_names_neither_core_hosts_and_custom_configs() -> None:
    with pytest.raises(InvalidArgumentError, match="demo:entry2"):
        split_model_server_config(_config("demo:ps_0", "demo:entry2"))
    custom = model_server_config_pb2.ModelServerConfig()
    custom.custom_model_config.Pack(model_server_config_pb2.ModelServerConfig())
    with pytest.raises(InvalidArgumentError, match="custom_model_config"):
        split_model_server_config(custom)


class _Recorder:
    """A servicer of either service that records which model each call named."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.calls: list[tuple[str, str]] = []

    async def _record(self, method: str, request: Any) -> str:
        self.calls.append((method, request.model_spec.name))
        return f"{self.label}:{method}"

    async def Predict(self, request: Any, context: Any) -> str:
        return await self._record("Predict", request)

    async def GetModelMetadata(self, request: Any, context: Any) -> str:
        return await self._record("GetModelMetadata", request)

    async def GetModelStatus(self, request: Any, context: Any) -> str:
        return await self._record("GetModelStatus", request)


class _Entry:
    def __init__(self, recorder: _Recorder | None) -> None:
        self.recorder = recorder

    def _get(self, name: str) -> Any:
        if self.recorder is None:
            raise NotFoundError(f"model {name!r} is not served here")
        return self.recorder

    def prediction(self, name: str) -> Any:
        return self._get(name)

    def model_servicer(self, name: str) -> Any:
        return self._get(name)


def _predict(name: str) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    return request


def test_prediction_dispatch_by_model_name() -> None:
    ps, dense, entry = _Recorder("ps"), _Recorder("dense"), _Recorder("entry")
    servicer = UnifiedPredictionServicer(ps=ps, dense=dense, entry=_Entry(entry))

    def metadata(name: str) -> get_model_metadata_pb2.GetModelMetadataRequest:
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = name
        return request

    async def scenario() -> list[Any]:
        return [
            await servicer.Predict(_predict("demo:ps_2"), None),
            await servicer.Predict(_predict("ps_0"), None),
            await servicer.Predict(_predict("demo:dense_0"), None),
            await servicer.Predict(_predict("demo:entry"), None),
            await servicer.Predict(_predict("entry"), None),
            await servicer.GetModelMetadata(metadata("demo:entry"), None),
            await servicer.GetModelMetadata(metadata("demo:dense_0"), None),
        ]

    answers = asyncio.run(scenario())
    assert answers == [
        "ps:Predict",
        "ps:Predict",
        "dense:Predict",
        "entry:Predict",
        "entry:Predict",
        "entry:GetModelMetadata",
        "dense:GetModelMetadata",
    ]
    assert ps.calls == [("Predict", "demo:ps_2"), ("Predict", "ps_0")]
    assert dense.calls == [("Predict", "demo:dense_0"), ("GetModelMetadata", "demo:dense_0")]
    assert entry.calls == [("Predict", "demo:entry"), ("Predict", "entry"), ("GetModelMetadata", "demo:entry")]


def test_unknown_names_and_a_missing_entry_are_not_found() -> None:
    servicer = UnifiedPredictionServicer(ps=_Recorder("ps"), dense=_Recorder("dense"), entry=_Entry(None))
    with pytest.raises(NotFoundError, match="demo:entry2"):
        asyncio.run(servicer.Predict(_predict("demo:entry2"), None))
    with pytest.raises(NotFoundError, match="demo:entry"):
        asyncio.run(servicer.Predict(_predict("demo:entry"), None))


def test_model_service_dispatches_status_and_hands_reloads_over_whole() -> None:
    ps, dense, entry = _Recorder("ps"), _Recorder("dense"), _Recorder("entry")
    applied: list[model_server_config_pb2.ModelServerConfig] = []

    async def apply(config: model_server_config_pb2.ModelServerConfig) -> None:
        applied.append(config)

    servicer = UnifiedModelServicer(ps=ps, dense=dense, entry=_Entry(entry), apply_config=apply)

    def status(name: str) -> get_model_status_pb2.GetModelStatusRequest:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        return request

    async def scenario() -> list[Any]:
        config = _config("demo:entry", "demo:ps_0")
        reply = await servicer.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), None)
        return [
            await servicer.GetModelStatus(status("demo:ps_0"), None),
            await servicer.GetModelStatus(status("demo:dense_0"), None),
            await servicer.GetModelStatus(status("demo:entry"), None),
            reply,
        ]

    *statuses, reply = asyncio.run(scenario())
    assert statuses == ["ps:GetModelStatus", "dense:GetModelStatus", "entry:GetModelStatus"]
    assert reply == model_management_pb2.ReloadConfigResponse()
    assert [[m.name for m in c.model_config_list.config] for c in applied] == [["demo:entry", "demo:ps_0"]]
    with pytest.raises(NotFoundError):
        asyncio.run(servicer.GetModelStatus(status("demo:entry2"), None))
