"""Embedding lookups as a Monolith entry sends them, through the PS's servicer and core (no network).

Monolith's entry graph calls its PS with the ``TfServingRemotePredict`` op (bytedance/monolith
monolith/native_training/runtime/ops/remote_predict_op.h): model_spec name + signature_name, no version (-1),
inputs encoded by ``Tensor::AsProtoField`` (typed ``int64_val``, not ``tensor_content``), ``output_filter`` = the
output aliases. distributed_ps.py builds two PS signatures and calls one of them:

- ``lookup`` (per-table hash tables, ``use_native_multi_hash_table=False``): one input per table, keyed by the
  table's name, answered by the output of the same name, float32 ``[n, dim]``; every table of the model is sent;
- ``raw_lookup`` (the multi-hash table, Monolith's default): ``id`` int64 + ``id_split`` int64 (row splits over
  the tables in the multi-hash table's order, the sorted names) -> ``flat_emb`` float32, all rows flattened.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monolith_serving.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.hash_table_dump import format_dump_filename, write_dump
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.proto_gen.tensorflow.core.framework import tensor_pb2, types_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2
from monolith_serving.ps.config import SubModelConfig
from monolith_serving.ps.core import PsCore, replay_updates
from monolith_serving.ps.metrics import PsMetrics
from monolith_serving.ps.servicer import PsPredictionServicer
from monolith_serving.ps.version_manager import VersionStateManager

NUM_PS = 2
PARTITION = 0
# Real per-table exports name tables by an md5 of the merged feature names (distributed_ps.get_sub_table_name).
T_A = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
T_B = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
ROWS = {
    T_A: ({2: [1.0, 2.0, 3.0], 4: [4.0, 5.0, 6.0]}, 3),
    T_B: ({6: [7.0, 8.0], -2: [9.0, 10.0]}, 2),
}
NATIVE = Path(__file__).parent / "data" / "native_multi_hash_table"


def _int64(values: Iterable[int], dtype: int = types_pb2.DT_INT64) -> tensor_pb2.TensorProto:
    """What ``Tensor::AsProtoField`` writes for a 1-d int64 tensor: the typed field, never tensor_content."""
    proto = tensor_pb2.TensorProto(dtype=dtype)  # type: ignore[arg-type]
    listed = list(values)
    proto.tensor_shape.dim.add(size=len(listed))
    if dtype == types_pb2.DT_INT32:
        proto.int_val.extend(listed)
    else:
        proto.int64_val.extend(listed)
    return proto


def _request(
    signature: str, inputs: dict[str, tensor_pb2.TensorProto], outputs: Iterable[str], model: str = f"ps_{PARTITION}"
) -> predict_pb2.PredictRequest:
    """A PredictRequest as remote_predict_op.h builds it: no version, typed inputs, output_filter = outputs."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    request.output_filter.extend(outputs)
    return request


def _write_tables(root: Path, tables: dict[str, tuple[dict[int, list[float]], int]]) -> Path:
    assets = root / f"ps_{PARTITION}" / "1" / "assets"
    assets.mkdir(parents=True)
    for table, (rows, dim) in tables.items():
        fids = np.array(list(rows), np.int64)
        values = np.array(list(rows.values()), np.float32).reshape(len(rows), dim)
        write_dump(assets / format_dump_filename(table, PARTITION, 0, 1), fids, values)
    return assets.parent.parent


async def _serving(base: Path, name: str = f"ps_{PARTITION}") -> tuple[PsPredictionServicer, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = PsMetrics(registry)
    manager = VersionStateManager(metrics=metrics, executor=ThreadPoolExecutor(1), replay=replay_updates)
    core = PsCore(versions=manager, metrics=metrics, num_ps=NUM_PS, max_fids_per_request=1000)
    await manager.apply_config([SubModelConfig(name, base, VersionPolicy(PolicyKind.LATEST, 1))])
    return PsPredictionServicer(core, metrics), registry


def _predict(servicer: PsPredictionServicer, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    async def call() -> predict_pb2.PredictResponse:
        answer = await servicer.Predict(request, None)  # type: ignore[arg-type]
        if isinstance(answer, bytes):  # a lookup answer, serialized by ps.wire: read it as the op's client would
            return predict_pb2.PredictResponse.FromString(answer)
        return answer

    return asyncio.run(call())


def _serve(base: Path) -> PsPredictionServicer:
    return asyncio.run(_serving(base))[0]


def _expected(table: str, fids: list[int]) -> np.ndarray:
    rows, dim = ROWS[table]
    return np.array([rows.get(f, [0.0] * dim) for f in fids], np.float32).reshape(len(fids), dim)


def test_lookup_under_the_table_names_a_monolith_entry_sends(tmp_path: Path) -> None:
    """distributed_ps.py _lookup_with_remote_predict: input and output aliases are the table names, every table of
    the model is sent (here one with no fid for this shard), output_filter names them all."""
    servicer = _serve(_write_tables(tmp_path, ROWS))
    request = _request("lookup", {T_A: _int64([4, 8, 2]), T_B: _int64([])}, [T_A, T_B])
    reply = _predict(servicer, request)
    assert set(reply.outputs) == {T_A, T_B}
    for table, fids in ((T_A, [4, 8, 2]), (T_B, [])):
        proto = reply.outputs[table]
        assert proto.dtype == types_pb2.DT_FLOAT
        assert [d.size for d in proto.tensor_shape.dim] == [len(fids), ROWS[table][1]]
        np.testing.assert_array_equal(from_tensor_proto(proto), _expected(table, fids))
    assert (reply.model_spec.name, reply.model_spec.version.value, reply.model_spec.signature_name) == (
        f"ps_{PARTITION}",
        1,
        "lookup",
    )


def test_both_spellings_mix_and_ours_wins_when_both_name_a_table(tmp_path: Path) -> None:
    """``<table>_id`` is our contract (REFERENCE §5) and is read first: with tables ``a`` and ``a_id`` the input
    ``a_id`` is table ``a``; ``a_id_id`` reaches table ``a_id``. Two inputs answering under one output name are
    refused."""
    tables = {"a": ({2: [1.0]}, 1), "a_id": ({2: [5.0, 5.0]}, 2), "x": ({4: [3.0]}, 1), "x_value": ({4: [8.0]}, 1)}
    servicer = _serve(_write_tables(tmp_path, tables))
    reply = _predict(servicer, _request("lookup", {"a_id": _int64([2]), "a_id_id": _int64([2]), "x": _int64([4])}, []))
    outputs = {name: from_tensor_proto(proto).tolist() for name, proto in reply.outputs.items()}
    assert outputs == {"a_value": [[1.0]], "a_id_value": [[5.0, 5.0]], "x": [[3.0]]}

    with pytest.raises(InvalidArgumentError, match="'x_value'.*also the output of input"):
        _predict(servicer, _request("lookup", {"x_id": _int64([4]), "x_value": _int64([4])}, []))


def test_unknown_lookup_inputs_and_outputs_are_refused_naming_them(tmp_path: Path) -> None:
    servicer = _serve(_write_tables(tmp_path, ROWS))
    with pytest.raises(InvalidArgumentError, match="'gamma'"):
        _predict(servicer, _request("lookup", {"gamma": _int64([2])}, []))
    with pytest.raises(NotFoundError, match="'gamma_id'"):
        _predict(servicer, _request("lookup", {"gamma_id": _int64([2])}, []))
    with pytest.raises(InvalidArgumentError, match=f"output_filter '{T_A}_value'"):
        _predict(servicer, _request("lookup", {T_A: _int64([2])}, [f"{T_A}_value"]))
    with pytest.raises(InvalidArgumentError, match=f"'{T_A}'.*dtype"):
        _predict(servicer, _request("lookup", {T_A: _int64([2], types_pb2.DT_INT32)}, []))
    with pytest.raises(InvalidArgumentError, match=f"'{T_A}'.*shard 0"):
        _predict(servicer, _request("lookup", {T_A: _int64([3])}, []))


def test_raw_lookup_answers_the_flat_rows_of_every_table_in_sorted_order(tmp_path: Path) -> None:
    """distributed_ps.py _native_hash_table_lookup_with_remote_predict; multi_hash_table_lookup_op.cc: the rows of
    table 0's ids, then table 1's, ..., each row ``dim`` floats, zeros for an unknown fid."""
    servicer, registry = asyncio.run(_serving(_write_tables(tmp_path, ROWS)))
    a_fids, b_fids = [2, 10, 4], [-2, 6, 6]
    request = _request("raw_lookup", {"id": _int64(a_fids + b_fids), "id_split": _int64([0, 3, 6])}, ["flat_emb"])
    reply = _predict(servicer, request)
    assert set(reply.outputs) == {"flat_emb"}
    flat = reply.outputs["flat_emb"]
    assert flat.dtype == types_pb2.DT_FLOAT and [d.size for d in flat.tensor_shape.dim] == [3 * 3 + 3 * 2]
    expected = np.concatenate([_expected(T_A, a_fids).ravel(), _expected(T_B, b_fids).ravel()])
    np.testing.assert_array_equal(from_tensor_proto(flat), expected)
    assert reply.model_spec.signature_name == "raw_lookup" and reply.model_spec.version.value == 1

    # A table with no ids (Monolith's ragged split leaves it empty) and no ids at all.
    reply = _predict(servicer, _request("raw_lookup", {"id": _int64([6]), "id_split": _int64([0, 0, 1])}, []))
    np.testing.assert_array_equal(from_tensor_proto(reply.outputs["flat_emb"]), [7.0, 8.0])
    reply = _predict(servicer, _request("raw_lookup", {"id": _int64([]), "id_split": _int64([0, 0, 0])}, []))
    assert from_tensor_proto(reply.outputs["flat_emb"]).shape == (0,)

    labels = {"model": f"ps_{PARTITION}", "table": T_A}
    assert registry.get_sample_value("monolith_ps_lookup_fids_total", labels) == 3
    assert registry.get_sample_value("monolith_ps_lookup_missing_fids_total", labels) == 1
    assert registry.get_sample_value("monolith_ps_request_latency_seconds_count", {"signature": "raw_lookup"}) == 3


@pytest.mark.parametrize(
    ("inputs", "outputs", "named"),
    [
        ({"id": _int64([2])}, [], "'id_split' is missing"),
        ({"id_split": _int64([0, 0, 0])}, [], "'id' is missing"),
        ({"id": _int64([2]), "id_split": _int64([0, 1, 1]), "flat_value": _int64([1])}, [], "'flat_value'"),
        ({"id": _int64([2]), "id_split": _int64([0, 1])}, [], "'id_split': 2 offsets"),
        ({"id": _int64([2, 4]), "id_split": _int64([0, 1, 1, 2, 2])}, [], "'id_split': 5 offsets"),
        ({"id": _int64([2, 4]), "id_split": _int64([0, 2, 1])}, [], "'id_split': offsets must rise"),
        ({"id": _int64([2, 4]), "id_split": _int64([0, 1, 1])}, [], "'id_split': offsets must rise"),
        ({"id": _int64([2, 3]), "id_split": _int64([0, 1, 2])}, [], "'id'.*shard 0"),
        ({"id": _int64([2], types_pb2.DT_INT32), "id_split": _int64([0, 1, 1])}, [], "'id'.*dtype"),
        ({"id": _int64([2]), "id_split": _int64([0, 1, 1])}, ["flat_value"], "output_filter 'flat_value'"),
    ],
)
def test_bad_raw_lookups_are_invalid_argument_naming_the_field(
    tmp_path: Path, inputs: dict[str, tensor_pb2.TensorProto], outputs: list[str], named: str
) -> None:
    servicer = _serve(_write_tables(tmp_path, ROWS))
    with pytest.raises(InvalidArgumentError, match=named):
        _predict(servicer, _request("raw_lookup", inputs, outputs))


def test_raw_lookup_of_a_native_multi_hash_table_dump(tmp_path: Path) -> None:
    """The dump Monolith's default export writes (TF-written fixture, tables fc_empty, fc_item, fc_user), looked
    up as its entry does. fc_empty has no rows on this shard: its width is unknown here, so fids of it cannot be
    laid out in flat_emb (FAILED_PRECONDITION naming it); without such fids the lookup is answered."""
    base = tmp_path / "ps_1"
    shutil.copytree(NATIVE / "ps_1" / "1700000000", base / "1700000000")
    expected = json.loads((NATIVE / "ps_1" / "expected.json").read_text())
    servicer = asyncio.run(_serving(base, "ps_1"))[0]
    item_fids = [*(int(f) for f in list(expected["fc_item"]["rows"])[:2]), 1]  # 1: on this shard, not in the table
    user_fids = [int(f) for f in expected["fc_user"]["rows"]][:3]
    request = _request(
        "raw_lookup",
        {"id": _int64(item_fids + user_fids), "id_split": _int64([0, 0, 3, 6])},
        ["flat_emb"],
        model="ps_1",
    )
    flat = from_tensor_proto(_predict(servicer, request).outputs["flat_emb"])
    want = [expected["fc_item"]["rows"].get(str(f), [0.0] * 3) for f in item_fids]
    want += [expected["fc_user"]["rows"][str(f)] for f in user_fids]
    np.testing.assert_allclose(flat, np.concatenate([np.asarray(row, np.float32) for row in want]), rtol=0, atol=0)

    request = _request("raw_lookup", {"id": _int64([3]), "id_split": _int64([0, 1, 1, 1])}, [], model="ps_1")
    with pytest.raises(FailedPreconditionError, match="'fc_empty' has no rows on this shard"):
        _predict(servicer, request)
    with pytest.raises(FailedPreconditionError, match="'fc_empty' has no rows on this shard"):
        _predict(servicer, _request("lookup", {"fc_empty": _int64([3])}, [], model="ps_1"))
    # Our own spelling keeps its [n, 0] answer, which our entry reads as missing fids.
    reply = _predict(servicer, _request("lookup", {"fc_empty_id": _int64([3])}, [], model="ps_1"))
    assert from_tensor_proto(reply.outputs["fc_empty_value"]).shape == (1, 0)


def test_metadata_lists_raw_lookup(tmp_path: Path) -> None:
    servicer = _serve(_write_tables(tmp_path, ROWS))
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = f"ps_{PARTITION}"
    reply = asyncio.run(servicer.GetModelMetadata(request, None))  # type: ignore[arg-type]
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(sigs)
    raw = sigs.signature_def["raw_lookup"]
    shapes = {name: (info.dtype, [d.size for d in info.tensor_shape.dim]) for name, info in raw.inputs.items()}
    assert shapes == {"id": (types_pb2.DT_INT64, [-1]), "id_split": (types_pb2.DT_INT64, [3])}
    assert (raw.outputs["flat_emb"].dtype, [d.size for d in raw.outputs["flat_emb"].tensor_shape.dim]) == (
        types_pb2.DT_FLOAT,
        [-1],
    )
