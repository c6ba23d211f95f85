"""Parameter sync under the names a real Monolith trainer sends, through the PS's servicer and core (no network).

Monolith (bytedance/monolith) names a hash table partition ``MonolithHashTable_<table>_<k>`` (<k>: the PS index;
hash_table_ops.hash_table_from_config, distributed_ps_factory) and its ``hashtable_assign`` inputs
``<that name>_id`` / ``_value`` (parameter_sync_client.cc, saved_model_exporters.build_hashtable_assign_inputs_outputs);
a multi-hash table is ``MonolithMultiHashTable_<k>`` and its push signature ``<that name>/raw_assign``
(parameter_sync_tf_bridge.cc, saved_model_exporters.add_multi_hashtable_assign_signatures). The dump files the
PS loads are named after the same resource names, ``MonolithHashTable_<table>_<k>-<j>-of-<m>``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.hash_table_dump import format_dump_filename, write_dump
from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2
from monolith_serving.ps.config import SubModelConfig
from monolith_serving.ps.core import ModelRef, PsCore, replay_updates
from monolith_serving.ps.metrics import PsMetrics
from monolith_serving.ps.servicer import PsPredictionServicer
from monolith_serving.ps.version_manager import VersionStateManager

NUM_PS = 2
PARTITION = 1
DIMS = {"alpha": 3, "beta_2": 2}  # a table name ending in _<digits>


def _export(tmp_path: Path) -> Path:
    assets = tmp_path / f"ps_{PARTITION}" / "1" / "assets"
    assets.mkdir(parents=True)
    for table, dim in DIMS.items():
        fids = np.array([1, 3, 5], np.int64)
        write_dump(assets / format_dump_filename(table, PARTITION, 0, 1), fids, np.ones((3, dim), np.float32))
    return assets.parent.parent


def _request(signature: str, inputs: dict[str, np.ndarray]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = f"ps_{PARTITION}"
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(to_tensor_proto(value))
    return request


async def _serving(tmp_path: Path) -> tuple[PsCore, PsPredictionServicer, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = PsMetrics(registry)
    manager = VersionStateManager(metrics=metrics, executor=ThreadPoolExecutor(1), replay=replay_updates)
    core = PsCore(versions=manager, metrics=metrics, num_ps=NUM_PS, max_fids_per_request=1000)
    config = SubModelConfig(f"ps_{PARTITION}", _export(tmp_path), VersionPolicy(PolicyKind.LATEST, 1))
    await manager.apply_config([config])
    return core, PsPredictionServicer(core, metrics), registry


def _lookup(core: PsCore, table: str, fids: list[int]) -> list[list[float]]:
    result = core.lookup(ModelRef(f"ps_{PARTITION}"), {f"{table}_id": to_tensor_proto(np.array(fids, np.int64))})
    out: list[list[float]] = result.outputs[f"{table}_value"].tolist()
    return out


def test_hashtable_assign_with_monolith_input_names_is_applied(tmp_path: Path) -> None:
    async def scenario() -> None:
        core, servicer, registry = await _serving(tmp_path)
        push = {
            "MonolithHashTable_alpha_1_id": np.array([3, 7], np.int64),
            "MonolithHashTable_alpha_1_value": np.array([[2, 2, 2], [7, 7, 7]], np.float32),
            "MonolithHashTable_beta_2_1_id": np.array([9], np.int64),
            "MonolithHashTable_beta_2_1_value": np.array([[9, 9]], np.float32),
        }
        reply = await servicer.Predict(_request("hashtable_assign", push), None)  # type: ignore[arg-type]
        assert isinstance(reply, predict_pb2.PredictResponse) and not reply.outputs
        assert _lookup(core, "alpha", [3, 7, 5]) == [[2, 2, 2], [7, 7, 7], [1, 1, 1]]
        assert _lookup(core, "beta_2", [9, 1]) == [[9, 9], [1, 1]]
        applied = registry.get_sample_value(
            "monolith_ps_sync_updates_applied_total", {"model": f"ps_{PARTITION}", "signature": "hashtable_assign"}
        )
        assert applied == 3
        # Another PS's resource name: routed to the wrong shard, nothing applied.
        wrong = {"MonolithHashTable_alpha_0_id": np.array([3], np.int64),
                 "MonolithHashTable_alpha_0_value": np.zeros((1, 3), np.float32)}  # fmt: skip
        with pytest.raises(InvalidArgumentError, match="PS partition 0, this is partition 1"):
            await servicer.Predict(_request("hashtable_assign", wrong), None)  # type: ignore[arg-type]
        assert _lookup(core, "alpha", [3]) == [[2, 2, 2]]

    asyncio.run(scenario())


def test_raw_assign_under_the_monolith_multi_hash_table_signature_is_applied(tmp_path: Path) -> None:
    async def scenario() -> None:
        core, servicer, registry = await _serving(tmp_path)
        # Tables in the model's order (sorted names): alpha (dim 3) then beta_2 (dim 2).
        push = {"id": np.array([5, 11, 13], np.int64), "id_split": np.array([0, 1, 3], np.int64),
                "flat_value": np.array([4, 4, 4, 8, 8, 6, 6], np.float32)}  # fmt: skip
        await servicer.Predict(_request(f"MonolithMultiHashTable_{PARTITION}/raw_assign", push), None)  # type: ignore[arg-type]
        assert _lookup(core, "alpha", [5]) == [[4, 4, 4]]
        assert _lookup(core, "beta_2", [11, 13]) == [[8, 8], [6, 6]]
        labels = {"model": f"ps_{PARTITION}", "signature": "table/raw_assign"}  # one series for every raw_assign name
        assert registry.get_sample_value("monolith_ps_sync_updates_applied_total", labels) == 3
        with pytest.raises(InvalidArgumentError, match="partition 0's multi-hash table"):
            await servicer.Predict(_request("MonolithMultiHashTable_0/raw_assign", push), None)  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_metadata_lists_the_monolith_raw_assign_signature(tmp_path: Path) -> None:
    async def scenario() -> None:
        _core, servicer, _ = await _serving(tmp_path)
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = f"ps_{PARTITION}"
        reply = await servicer.GetModelMetadata(request, None)  # type: ignore[arg-type]
        sigs = get_model_metadata_pb2.SignatureDefMap()
        assert reply.metadata["signature_def"].Unpack(sigs)
        monolith = sigs.signature_def[f"MonolithMultiHashTable_{PARTITION}/raw_assign"]
        assert monolith == sigs.signature_def["table/raw_assign"]
        assert set(sigs.signature_def) == {"lookup", "raw_lookup", "hashtable_assign", "table/raw_assign",
                                           f"MonolithMultiHashTable_{PARTITION}/raw_assign"}  # fmt: skip

    asyncio.run(scenario())


def test_a_lookup_reply_still_round_trips(tmp_path: Path) -> None:
    """The servicer's lookup path is unchanged by the signature routing (bytes reply, pre-serialized)."""

    async def scenario() -> None:
        _core, servicer, _ = await _serving(tmp_path)
        reply = await servicer.Predict(_request("lookup", {"alpha_id": np.array([1], np.int64)}), None)  # type: ignore[arg-type]
        assert isinstance(reply, bytes)
        decoded = predict_pb2.PredictResponse.FromString(reply)
        assert from_tensor_proto(decoded.outputs["alpha_value"]).tolist() == [[1, 1, 1]]

    asyncio.run(scenario())
