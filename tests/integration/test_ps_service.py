"""Real ``monolith-serving ps`` processes on loopback, spoken to over real gRPC."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from monolith_saved_model import BIAS_AND_VEC, saved_model, table_config
from procs import ServerProcess, free_port, model_server_health, wait_model_server_health

from monolith_serving.client.health import check_health
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.core.hash_table_dump import find_dump_files, format_dump_filename, read_dump, write_dump
from monolith_serving.core.tensor_codec import from_tensor_proto, to_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2
from monolith_serving.ps.config import PsConfig, SubModelConfig
from monolith_serving.ps.server import PsServer
from monolith_serving.ps.version_manager import State

pytestmark = pytest.mark.integration

DIMS = {"alpha": 33, "beta_tbl": 17}  # an underscore in a table name, dims that are not powers of 2
NUM_PS = 2
AVAILABLE, END = 30, 50
# The PS's health services: the whole server and each gRPC service it hosts.


def _fids(slot: int, n: int, partition: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = np.unique((np.int64(slot) << 48) | rng.integers(0, 1 << 40, 3 * n, dtype=np.int64))
    return raw[raw % NUM_PS == partition][:n]


def write_version(sub_model_dir: Path, version: int, *, fill: float | None = None, seed: int = 0) -> dict[str, dict]:
    """Partitions 0 and 1 of every table, each split over 3 files (one empty); returns partition 0's rows."""
    assets = sub_model_dir / str(version) / "assets"
    assets.mkdir(parents=True)
    rows: dict[str, dict] = {}
    for t, (table, dim) in enumerate(sorted(DIMS.items())):
        for partition in (0, 1):
            fids = _fids(t + 1, 500, partition, seed + 10 * t + partition)
            rng = np.random.default_rng(seed + 100 + t)
            values = rng.standard_normal((len(fids), dim), dtype=np.float32)
            if fill is not None:
                values[:] = fill
            cut = len(fids) // 3
            parts = [(fids[:cut], values[:cut]), (fids[:0], values[:0]), (fids[cut:], values[cut:])]
            for j, (f, v) in enumerate(parts):
                write_dump(assets / format_dump_filename(table, partition, j, 3), f, v)
            if partition == 0:
                rows[table] = dict(zip(fids.tolist(), values, strict=True))
    return rows


def model_config_text(models: dict[str, Path], policy: str = "latest { num_versions: 1 }") -> str:
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" '
        f'model_version_policy {{ {policy} }} version_labels {{ key: "stable" value: 1 }} }}\n'
        for name, path in models.items()
    )
    return f"model_config_list {{\n{entries}}}\n"


class Ps:
    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc
        self.channel = grpc.insecure_channel(proc.address)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(
        self, model: str, signature: str, inputs: dict[str, object], version: int | None = None, label: str = ""
    ) -> predict_pb2.PredictResponse:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        if label:
            request.model_spec.version_label = label
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(value if hasattr(value, "dtype") and hasattr(value, "tensor_shape")
                                          else to_tensor_proto(value))  # fmt: skip
        return self.predict_stub.Predict(request, timeout=10)

    def lookup(self, model: str, fids: dict[str, np.ndarray], **kw: object) -> tuple[int, dict[str, np.ndarray]]:
        reply = self.predict(model, "lookup", {f"{t}_id": f for t, f in fids.items()}, **kw)  # type: ignore[arg-type]
        outputs = {name: from_tensor_proto(proto) for name, proto in reply.outputs.items()}
        for proto in reply.outputs.values():
            assert not proto.float_val  # tensors travel as raw tensor_content bytes
            assert len(proto.tensor_content) == 4 * int(np.prod([d.size for d in proto.tensor_shape.dim]))
        return reply.model_spec.version.value, outputs

    def status(self, model: str) -> dict[int, tuple[int, int, str]]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        reply = self.model_stub.GetModelStatus(request, timeout=10)
        return {s.version: (s.state, s.status.error_code, s.status.error_message) for s in reply.model_version_status}

    def wait_state(self, model: str, version: int, state: int, timeout_s: float = 30) -> tuple[int, int, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.status(model).get(version)
            if current is not None and current[0] == state:
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"{model} v{version} is {current}, not state {state}\n{self.proc.log_tail()}")
            time.sleep(0.1)


def start_ps(tmp: Path, args: list[str], name: str = "ps") -> ServerProcess:
    port = free_port()
    return ServerProcess("ps", ["--port", str(port), "--host", "127.0.0.1", *args], port=port,
                         log_path=tmp / f"{name}.log")  # fmt: skip


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ps, dict[str, dict], Path]]:
    """One PS hosting ps_0 (partition 0 of a hand-built 2-table, 3-files-per-partition dump)."""
    tmp = tmp_path_factory.mktemp("ps_hand")
    rows = write_version(tmp / "ps_0", 1, seed=1)
    config = tmp / "models.config"
    config.write_text(model_config_text({"ps_0": tmp / "ps_0"}))
    args = ["--model_config_file", str(config), "--num_ps", str(NUM_PS), "--max_fids_per_request", "5000",
            "--file_system_poll_wait_seconds", "0"]  # fmt: skip
    with start_ps(tmp, args) as proc:
        yield Ps(proc), rows, tmp


def _rows_of(rows: dict[int, np.ndarray], fids: np.ndarray, dim: int) -> np.ndarray:
    return np.stack([rows.get(int(f), np.zeros(dim, np.float32)) for f in fids])


def test_lookup_matches_the_rows_written_and_zeros_for_unknown(hand_built: tuple[Ps, dict, Path]) -> None:
    ps, rows, _ = hand_built
    assert ps.status("ps_0") == {1: (AVAILABLE, 0, "")}
    rng = np.random.default_rng(5)
    query = {}
    for table in DIMS:
        known = np.array(list(rows[table]), dtype=np.int64)
        unknown = np.array([(np.int64(60) << 48) | 2 * k for k in range(1, 6)], dtype=np.int64)
        query[table] = np.concatenate([known[rng.integers(0, len(known), 300)], unknown])
    version, outputs = ps.lookup("ps_0", query)
    assert version == 1
    for table, dim in DIMS.items():
        np.testing.assert_array_equal(outputs[f"{table}_value"], _rows_of(rows[table], query[table], dim))
        assert not outputs[f"{table}_value"][-5:].any()
    # A subset of tables, an empty batch, pinning by number and by label.
    version, outputs = ps.lookup("ps_0", {"alpha": np.empty(0, np.int64)}, version=1)
    assert version == 1 and outputs["alpha_value"].shape == (0, 33) and set(outputs) == {"alpha_value"}
    assert ps.lookup("ps_0", {"alpha": query["alpha"][:3]}, label="stable")[0] == 1


def test_sync_both_signatures_and_atomic_rejection(hand_built: tuple[Ps, dict, Path]) -> None:
    ps, rows, _ = hand_built
    existing = np.array(list(rows["alpha"])[:4], dtype=np.int64)
    fresh = np.array([(np.int64(70) << 48) | 2 * k for k in range(1, 5)], dtype=np.int64)
    alpha_fids = np.concatenate([existing, fresh])
    alpha_vals = np.full((8, 33), 3.5, np.float32)
    reply = ps.predict("ps_0", "hashtable_assign", {"alpha_id": alpha_fids, "alpha_value": alpha_vals})
    assert not reply.outputs and reply.model_spec.version.value == 1
    assert np.all(ps.lookup("ps_0", {"alpha": alpha_fids})[1]["alpha_value"] == 3.5)

    # table/raw_assign: tables in the model's order (sorted names): alpha then beta_tbl.
    beta_fids = np.array(list(rows["beta_tbl"])[:2], dtype=np.int64)
    flat = np.concatenate([np.full(33, 1.25, np.float32), np.full(2 * 17, -2.0, np.float32)])
    ps.predict("ps_0", "table/raw_assign", {"id": np.concatenate([fresh[:1], beta_fids]),
                                            "id_split": np.array([0, 1, 3], np.int64), "flat_value": flat})  # fmt: skip
    _, out = ps.lookup("ps_0", {"alpha": fresh[:1], "beta_tbl": beta_fids})
    assert np.all(out["alpha_value"] == 1.25) and np.all(out["beta_tbl_value"] == -2.0)

    # A request with one good and one bad table applies nothing.
    before = ps.lookup("ps_0", {"alpha": existing, "beta_tbl": beta_fids})[1]
    bad = {"alpha_id": existing, "alpha_value": np.zeros((4, 33), np.float32),
           "beta_tbl_id": beta_fids, "beta_tbl_value": np.zeros((2, 16), np.float32)}  # fmt: skip
    with pytest.raises(grpc.RpcError) as info:
        ps.predict("ps_0", "hashtable_assign", bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "beta_tbl_value" in info.value.details()
    after = ps.lookup("ps_0", {"alpha": existing, "beta_tbl": beta_fids})[1]
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def test_sync_under_the_names_a_monolith_trainer_sends(hand_built: tuple[Ps, dict, Path]) -> None:
    """Monolith's trainer prefixes hashtable_assign inputs with the table's resource name
    ``MonolithHashTable_<table>_<k>`` and pushes a multi-hash table under ``MonolithMultiHashTable_<k>/raw_assign``
    (<k>: the PS index). ps_0 applies both; another shard's names are refused."""
    ps, rows, _ = hand_built
    existing = np.array(list(rows["alpha"])[4:6], dtype=np.int64)
    fresh = np.array([(np.int64(80) << 48) | 2 * k for k in range(1, 4)], dtype=np.int64)
    alpha_fids = np.concatenate([existing, fresh])
    alpha_vals = np.arange(5 * 33, dtype=np.float32).reshape(5, 33)
    reply = ps.predict("ps_0", "hashtable_assign", {"MonolithHashTable_alpha_0_id": alpha_fids,
                                                    "MonolithHashTable_alpha_0_value": alpha_vals})  # fmt: skip
    assert not reply.outputs and reply.model_spec.version.value == 1
    np.testing.assert_array_equal(ps.lookup("ps_0", {"alpha": alpha_fids})[1]["alpha_value"], alpha_vals)

    beta_fids = np.array([(np.int64(81) << 48) | 2 * k for k in range(1, 3)], dtype=np.int64)
    flat = np.concatenate([np.full(33, 6.5, np.float32), np.full(2 * 17, -1.5, np.float32)])
    ps.predict("ps_0", "MonolithMultiHashTable_0/raw_assign", {"id": np.concatenate([fresh[:1], beta_fids]),
               "id_split": np.array([0, 1, 3], np.int64), "flat_value": flat})  # fmt: skip
    _, out = ps.lookup("ps_0", {"alpha": fresh[:1], "beta_tbl": beta_fids})
    assert np.all(out["alpha_value"] == 6.5) and np.all(out["beta_tbl_value"] == -1.5)

    for signature, inputs in [
        ("hashtable_assign", {"MonolithHashTable_alpha_1_id": fresh[:1],
                              "MonolithHashTable_alpha_1_value": np.zeros((1, 33), np.float32)}),
        ("MonolithMultiHashTable_1/raw_assign", {"id": fresh[:1], "id_split": np.array([0, 1, 1], np.int64),
                                                 "flat_value": np.zeros(33, np.float32)}),
    ]:  # fmt: skip
        with pytest.raises(grpc.RpcError) as refused:
            ps.predict("ps_0", signature, inputs)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, signature
        assert "partition 1" in str(refused.value.details()) and "this is partition 0" in str(refused.value.details())
    assert np.all(ps.lookup("ps_0", {"alpha": fresh[:1]})[1]["alpha_value"] == 6.5)


def _typed_int64(values: np.ndarray) -> object:
    """A 1-d int64 tensor as TensorFlow's ``Tensor::AsProtoField`` encodes it (typed int64_val, no tensor_content)."""
    proto = to_tensor_proto(np.empty(0, np.int64))
    proto.tensor_shape.dim[0].size = len(values)
    proto.int64_val.extend(values.tolist())
    return proto


def test_lookups_as_a_monolith_entry_sends_them(hand_built: tuple[Ps, dict, Path]) -> None:
    """Monolith's TfServingRemotePredict op (remote_predict_op.h) sends no version, typed inputs and the output
    aliases as output_filter; distributed_ps.py calls ``lookup`` keyed by the table names (per-table hash tables)
    or ``raw_lookup`` with ``id``/``id_split`` -> ``flat_emb`` (the multi-hash table, Monolith's default)."""
    ps, rows, _ = hand_built
    alpha = np.array([*list(rows["alpha"])[20:23], (np.int64(90) << 48) | 2], np.int64)  # rows no test pushes to
    beta = np.array(list(rows["beta_tbl"])[20:22], np.int64)
    expected = {"alpha": _rows_of(rows["alpha"], alpha, 33), "beta_tbl": _rows_of(rows["beta_tbl"], beta, 17)}

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ps_0"
    request.model_spec.signature_name = "lookup"
    for table, fids in (("alpha", alpha), ("beta_tbl", beta)):
        request.inputs[table].CopyFrom(_typed_int64(fids))
    request.output_filter.extend(["alpha", "beta_tbl"])
    reply = ps.predict_stub.Predict(request, timeout=10)
    assert set(reply.outputs) == {"alpha", "beta_tbl"} and reply.model_spec.version.value == 1
    for table, want in expected.items():
        np.testing.assert_array_equal(from_tensor_proto(reply.outputs[table]), want)

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ps_0"
    request.model_spec.signature_name = "raw_lookup"
    request.inputs["id"].CopyFrom(_typed_int64(np.concatenate([alpha, beta])))
    request.inputs["id_split"].CopyFrom(_typed_int64(np.array([0, len(alpha), len(alpha) + len(beta)])))
    request.output_filter.append("flat_emb")
    reply = ps.predict_stub.Predict(request, timeout=10)
    assert set(reply.outputs) == {"flat_emb"} and reply.model_spec.signature_name == "raw_lookup"
    flat = np.concatenate([expected["alpha"].ravel(), expected["beta_tbl"].ravel()])
    np.testing.assert_array_equal(from_tensor_proto(reply.outputs["flat_emb"]), flat)

    request.inputs["id_split"].CopyFrom(_typed_int64(np.array([0, len(alpha)])))
    with pytest.raises(grpc.RpcError) as info:
        ps.predict_stub.Predict(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "id_split" in str(info.value.details())


I64 = np.array([2, 4], np.int64)


@pytest.mark.parametrize(
    ("model", "signature", "inputs", "version", "code", "named"),
    [
        ("ps_9", "lookup", {"alpha_id": I64}, None, grpc.StatusCode.NOT_FOUND, "ps_9"),
        ("ps_0", "lookup", {"gamma_id": I64}, None, grpc.StatusCode.NOT_FOUND, "gamma"),
        ("ps_0", "lookup", {"alpha_id": I64}, 7, grpc.StatusCode.NOT_FOUND, "version 7"),
        ("ps_0", "score", {"alpha_id": I64}, None, grpc.StatusCode.NOT_FOUND, "score"),
        ("ps_0", "lookup", {"alpha_id": I64.astype(np.int32)}, None, grpc.StatusCode.INVALID_ARGUMENT, "alpha_id"),
        ("ps_0", "lookup", {"alpha_id": I64.reshape(2, 1)}, None, grpc.StatusCode.INVALID_ARGUMENT, "alpha_id"),
        ("ps_0", "lookup", {"alpha_id": np.array([3], np.int64)}, None, grpc.StatusCode.INVALID_ARGUMENT, "alpha_id"),
        ("ps_0", "lookup", {"alpha_id": np.zeros(6000, np.int64)}, None, grpc.StatusCode.RESOURCE_EXHAUSTED, "5000"),
        ("ps_0", "hashtable_assign", {"alpha_id": I64, "alpha_value": np.zeros(65, np.float32)}, None,
         grpc.StatusCode.INVALID_ARGUMENT, "alpha_value"),
        ("ps_0", "hashtable_assign", {"alpha_id": np.array([1], np.int64), "alpha_value": np.zeros(33, np.float32)},
         None, grpc.StatusCode.INVALID_ARGUMENT, "alpha_id"),
        ("ps_0", "hashtable_assign", {"gamma_id": I64, "gamma_value": np.zeros(2, np.float32)}, None,
         grpc.StatusCode.NOT_FOUND, "gamma"),
        ("ps_0", "table/raw_assign", {"id": I64, "id_split": np.array([0, 1, 1], np.int64),
                                      "flat_value": np.zeros(66, np.float32)}, None,
         grpc.StatusCode.INVALID_ARGUMENT, "id_split"),
        ("ps_0", "table/raw_assign", {"id": I64, "id_split": np.array([0, 2, 2], np.int64),
                                      "flat_value": np.zeros(65, np.float32)}, None,
         grpc.StatusCode.INVALID_ARGUMENT, "flat_value"),
        ("ps_0", "table/raw_assign", {"id": np.zeros(6000, np.int64), "id_split": np.array([0, 6000, 6000], np.int64),
                                      "flat_value": np.zeros(6000 * 33, np.float32)}, None,
         grpc.StatusCode.RESOURCE_EXHAUSTED, "5000"),
    ],
)  # fmt: skip
def test_bad_requests_get_the_right_status(
    hand_built: tuple[Ps, dict, Path],
    model: str,
    signature: str,
    inputs: dict[str, object],
    version: int | None,
    code: grpc.StatusCode,
    named: str,
) -> None:
    ps, _, _ = hand_built
    with pytest.raises(grpc.RpcError) as info:
        ps.predict(model, signature, inputs, version=version)
    assert info.value.code() == code, info.value.details()
    assert named in info.value.details()


def test_classify_regress_multi_inference_are_refused_as_tf_serving_refuses_them(
    hand_built: tuple[Ps, dict, Path],
) -> None:
    """A PS model has predict signatures only: INVALID_ARGUMENT for a served one, NOT_FOUND for another."""
    ps, _, _ = hand_built
    multi = classification_pb2.MultiInferenceRequest()
    multi.tasks.add().model_spec.name = "ps_0"
    calls = {
        "Classify": (ps.predict_stub.Classify, classification_pb2.ClassificationRequest(), "classification"),
        "Regress": (ps.predict_stub.Regress, classification_pb2.RegressionRequest(), "regression"),
        "MultiInference": (ps.predict_stub.MultiInference, multi, "classification or regression"),
    }
    for method, (call, request, kind) in calls.items():
        if method != "MultiInference":
            request.model_spec.name = "ps_9"
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=10)
            assert info.value.code() is grpc.StatusCode.NOT_FOUND, info.value.details()
            request.model_spec.name = "ps_0"
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == (
            f"{method}: model 'ps_0' has no {kind} signature 'serving_default': a PS serves predict signatures only "
            "(use Predict)"
        )
    assert ps.status("ps_0")  # still serving


def test_metadata_and_metrics(hand_built: tuple[Ps, dict, Path]) -> None:
    ps, _, _ = hand_built
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "ps_0"
    reply = ps.predict_stub.GetModelMetadata(request, timeout=10)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(sigs)
    lookup = sigs.signature_def["lookup"]
    assert set(lookup.inputs) == {"alpha_id", "beta_tbl_id"}
    assert [d.size for d in lookup.outputs["beta_tbl_value"].tensor_shape.dim] == [-1, 17]
    assert {"hashtable_assign", "table/raw_assign", "raw_lookup"} <= set(sigs.signature_def)


def test_a_table_with_no_rows_on_the_shard_takes_its_dim_from_the_first_sync(tmp_path: Path) -> None:
    """REFERENCE §2: dump files may be empty, so a partition can hold no rows of a table; its width is then
    unknown to the PS until a trainer pushes rows."""
    write_version(tmp_path / "ps_0", 1, seed=3)
    assets = tmp_path / "ps_0" / "1" / "assets"
    for j in range(2):  # "gamma": partition 0 all empty files, partition 1 with rows
        write_dump(assets / format_dump_filename("gamma", 0, j, 2), np.empty(0, np.int64), np.empty((0, 8), np.float32))
    write_dump(assets / format_dump_filename("gamma", 1, 0, 1), np.array([1, 3], np.int64), np.ones((2, 8), np.float32))
    config = tmp_path / "models.config"
    config.write_text(model_config_text({"ps_0": tmp_path / "ps_0"}))
    args = ["--model_config_file", str(config), "--num_ps", str(NUM_PS), "--file_system_poll_wait_seconds", "0"]
    with start_ps(tmp_path, args) as proc:
        ps = Ps(proc)
        _, outputs = ps.lookup("ps_0", {"gamma": np.array([2, 4], np.int64)})
        assert outputs["gamma_value"].shape == (2, 0)  # the entry reads it as all missing
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "ps_0"
        sigs = get_model_metadata_pb2.SignatureDefMap()
        assert ps.predict_stub.GetModelMetadata(request, timeout=10).metadata["signature_def"].Unpack(sigs)
        assert [d.size for d in sigs.signature_def["lookup"].outputs["gamma_value"].tensor_shape.dim] == [-1, -1]
        pushed = np.arange(16, dtype=np.float32).reshape(2, 8)
        ps.predict("ps_0", "hashtable_assign", {"gamma_id": np.array([2, 6], np.int64), "gamma_value": pushed})
        _, outputs = ps.lookup("ps_0", {"gamma": np.array([6, 2, 4], np.int64)})
        np.testing.assert_array_equal(outputs["gamma_value"], np.stack([pushed[1], pushed[0], np.zeros(8)]))
        with pytest.raises(grpc.RpcError) as refused:
            ps.predict("ps_0", "hashtable_assign", {"gamma_id": np.array([8], np.int64),
                                                     "gamma_value": np.ones((1, 9), np.float32)})  # fmt: skip
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "gamma_value" in str(refused.value.details())


def test_a_monolith_export_is_served_as_its_saved_model_codes_it(tmp_path: Path) -> None:
    """Monolith's serving PS keeps rows in the serving codec of its table config (``saved_model.pb``; fp16 for
    embedding slices by default) and answers the decoded floats, for dumped and synced rows alike; a table with no
    rows on the shard has the config's dim (a Monolith entry can read its zeros)."""
    rows = write_version(tmp_path / "ps_0", 1, seed=4)
    assets = tmp_path / "ps_0" / "1" / "assets"
    write_dump(assets / format_dump_filename("gamma", 0, 0, 1), np.empty(0, np.int64), np.empty((0, 5), np.float32))
    configs = {"alpha": table_config([(1, "fp32", {}), (32, "fp16", {})]), "beta_tbl": table_config([(17, "fp32", {})]),
               "gamma": table_config(BIAS_AND_VEC)}  # fmt: skip
    (tmp_path / "ps_0" / "1" / "saved_model.pb").write_bytes(saved_model(per_table=configs, partition=0))
    config = tmp_path / "models.config"
    config.write_text(model_config_text({"ps_0": tmp_path / "ps_0"}))
    args = ["--model_config_file", str(config), "--num_ps", str(NUM_PS), "--file_system_poll_wait_seconds", "0"]
    with start_ps(tmp_path, args) as proc:
        ps = Ps(proc)
        alpha = np.array(list(rows["alpha"])[:50], np.int64)
        beta = np.array(list(rows["beta_tbl"])[:50], np.int64)
        _, out = ps.lookup("ps_0", {"alpha": alpha, "beta_tbl": beta, "gamma": np.array([2, 4], np.int64)})
        dumped = _rows_of(rows["alpha"], alpha, 33)
        np.testing.assert_array_equal(out["alpha_value"][:, :1], dumped[:, :1])
        np.testing.assert_array_equal(out["alpha_value"][:, 1:], dumped[:, 1:].astype(np.float16).astype(np.float32))
        assert not np.array_equal(out["alpha_value"], dumped)
        np.testing.assert_array_equal(out["beta_tbl_value"], _rows_of(rows["beta_tbl"], beta, 17))
        assert out["gamma_value"].shape == (2, 5) and not out["gamma_value"].any()

        pushed = np.full((2, 33), 0.1, np.float32)
        ps.predict(
            "ps_0", "hashtable_assign", {"alpha_id": np.array([alpha[0], 2 << 20], np.int64), "alpha_value": pushed}
        )
        _, out = ps.lookup("ps_0", {"alpha": np.array([alpha[0], 2 << 20], np.int64)})
        assert out["alpha_value"][:, 0].tolist() == [np.float32(0.1)] * 2
        assert np.all(out["alpha_value"][:, 1:] == np.float32(0.0999755859375))


def test_export_demo_multi_model_metrics_and_reload(tmp_path: Path) -> None:
    import subprocess
    import sys
    import urllib.request

    out = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "monolith_serving", "export-demo", "--out", str(out), "--num-ps", "2"],
                   check=True, capture_output=True)  # fmt: skip
    config = tmp_path / "models.config"
    config.write_text(model_config_text({"demo:ps_0": out / "ps_0", "demo:ps_1": out / "ps_1"}))
    metrics_port = free_port()
    args = ["--model_config_file", str(config), "--num_ps", "2", "--metrics_port", str(metrics_port)]
    with start_ps(tmp_path, args) as proc:
        ps = Ps(proc)
        for i in (0, 1):
            (version,) = ps.status(f"demo:ps_{i}")
            version_dir = out / f"ps_{i}" / str(version)
            files = find_dump_files(version_dir / "assets", i)
            assert files
            for table, paths in files.items():
                fids, values = read_dump(paths)
                got_version, outputs = ps.lookup(f"demo:ps_{i}", {table: fids})
                assert got_version == version
                np.testing.assert_array_equal(outputs[f"{table}_value"], values)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        for metric in ("monolith_ps_lookup_requests_total", "monolith_ps_lookup_fids_total",
                       "monolith_ps_request_latency_seconds_bucket", "monolith_ps_table_rows",
                       "monolith_ps_table_bytes", "monolith_ps_load_duration_seconds_count"):  # fmt: skip
            assert metric in text, metric
        # HandleReloadConfigRequest: keep only demo:ps_1.
        request = model_management_pb2.ReloadConfigRequest()
        request.config.CopyFrom(model_server_config_pb2.ModelServerConfig())
        entry = request.config.model_config_list.config.add(name="demo:ps_1", base_path=str(out / "ps_1"))
        entry.model_version_policy.latest.num_versions = 1
        ps.model_stub.HandleReloadConfigRequest(request, timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            ps.status("demo:ps_0")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert next(iter(ps.status("demo:ps_1").values()))[0] == AVAILABLE
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'model="demo:ps_0"' not in text  # a removed sub-model leaves no series behind
        assert 'monolith_ps_lookup_requests_total{model="demo:ps_1"}' in text  # the one kept keeps its series


def test_version_switch_under_load_and_corrupt_dump_recovery(tmp_path: Path) -> None:
    base = tmp_path / "ps_0"
    write_version(base, 1, fill=1.0)
    args = ["--model_name", "ps_0", "--model_base_path", str(base), "--num_ps", str(NUM_PS),
            "--file_system_poll_wait_seconds", "0.2"]  # fmt: skip
    with start_ps(tmp_path, args) as proc:
        ps = Ps(proc)
        query = {t: _fids(k + 1, 500, 0, 10 * k)[:200] for k, t in enumerate(sorted(DIMS))}
        stop = threading.Event()
        seen: list[int] = []
        failures: list[str] = []

        def hammer() -> None:
            client = Ps(proc)
            last = 0
            while not stop.is_set():
                try:
                    version, outputs = client.lookup("ps_0", query)
                except grpc.RpcError as error:
                    failures.append(f"{error.code()}: {error.details()}")
                    continue
                for name, values in outputs.items():
                    if not np.all(values == float(version)):
                        failures.append(f"{name} mixes versions in a response of version {version}")
                if version < last:
                    failures.append(f"version went back from {last} to {version}")
                last = version
                seen.append(version)

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            # Staged and renamed in, as a real exporter does: written in place, a poll could catch it half-written.
            write_version(tmp_path / "staging2", 2, fill=2.0)
            (tmp_path / "staging2" / "2").rename(base / "2")
            ps.wait_state("ps_0", 2, AVAILABLE)
            ps.wait_state("ps_0", 1, END)
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert not failures, failures[:5]
        assert 1 in seen and seen[-1] == 2
        # A corrupt dump: version 3 ends with an error, version 2 keeps serving.
        tmp3 = tmp_path / "staging3"
        write_version(tmp3, 3, fill=3.0)
        victim = sorted((tmp3 / "3" / "assets").glob("MonolithHashTable_alpha_0-*"))[-1]
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data[: len(data) - 7]))
        (tmp3 / "3").rename(base / "3")
        _state, code, message = ps.wait_state("ps_0", 3, END)
        assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and victim.name in message
        assert ps.lookup("ps_0", query)[0] == 2
        assert ps.status("ps_0")[2][0] == AVAILABLE


def test_a_version_without_dumps_of_its_partition_fails_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    """A version whose assets/ holds no dump file of the partition (here: only FIFOs named like dumps, as the
    shutdown audit found) ends with an error naming the folder; it must not replace the serving version with
    empty tables."""
    base = tmp_path / "ps_0"
    rows = write_version(base, 1, seed=4)
    args = ["--model_name", "ps_0", "--model_base_path", str(base), "--num_ps", str(NUM_PS),
            "--file_system_poll_wait_seconds", "0.2"]  # fmt: skip
    with start_ps(tmp_path, args) as proc:
        ps = Ps(proc)
        ps.wait_state("ps_0", 1, AVAILABLE)
        staged = tmp_path / "staging" / "2"
        (staged / "assets").mkdir(parents=True)
        for table in DIMS:
            os.mkfifo(staged / "assets" / format_dump_filename(table, 0, 0, 1))
        staged.rename(base / "2")
        _state, code, message = ps.wait_state("ps_0", 2, END)
        assert code == grpc.StatusCode.NOT_FOUND.value[0], message
        assert str(base / "2" / "assets") in message and "MonolithHashTable_<table>_0-<jjjjj>-of-<mmmmm>" in message
        assert ps.status("ps_0")[1][0] == AVAILABLE
        fids = np.array(list(rows["alpha"])[:5], dtype=np.int64)
        version, out = ps.lookup("ps_0", {"alpha": fids})
        assert version == 1
        np.testing.assert_array_equal(out["alpha_value"], _rows_of(rows["alpha"], fids, DIMS["alpha"]))
        assert model_server_health(proc) == {"SERVING"}


def _hold_health(proc: ServerProcess, status: str, for_s: float = 1.0) -> None:
    """Health says ``status`` throughout ``for_s`` (several file-system polls of the tests below)."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        assert model_server_health(proc) == {status}, proc.log_tail()
        time.sleep(0.1)


def _wait_status_answers(ps: Ps, model: str, timeout_s: float = 30.0) -> dict[int, tuple[int, int, str]]:
    """GetModelStatus once the PS is up and hosts ``model`` (its first load attempt has begun)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ps.status(model)
        except grpc.RpcError:
            assert time.monotonic() < deadline, ps.proc.log_tail()
            time.sleep(0.1)


def _corrupt_version(base: Path, version: int) -> None:
    write_version(base, version)
    victim = sorted((base / str(version) / "assets").glob("MonolithHashTable_alpha_0-*"))[-1]
    victim.write_bytes(victim.read_bytes()[:-7])


@pytest.mark.parametrize("export", ["empty", "missing", "corrupt"])
def test_health_is_not_serving_until_a_version_loads(tmp_path: Path, export: str) -> None:
    """An empty export, a missing base path or corrupt dumps: GetModelStatus shows no AVAILABLE version, and
    health (every service) says NOT_SERVING; once a good version appears, the file-system poll loads it and
    health turns SERVING."""
    base = tmp_path / "models" / "ps_0"
    if export != "missing":
        base.mkdir(parents=True)
    if export == "corrupt":
        _corrupt_version(base, 1)
    args = ["--model_name", "ps_0", "--model_base_path", str(base), "--num_ps", str(NUM_PS),
            "--file_system_poll_wait_seconds", "0.2"]  # fmt: skip
    proc = start_ps(tmp_path, args).launch()
    try:
        ps = Ps(proc)
        status = _wait_status_answers(ps, "ps_0")
        if export == "corrupt":
            ps.wait_state("ps_0", 1, END)
        else:
            assert status == {}
        _hold_health(proc, "NOT_SERVING")
        # Staged and renamed in, as a real exporter does.
        write_version(tmp_path / "staging", 2)
        base.mkdir(parents=True, exist_ok=True)
        (tmp_path / "staging" / "2").rename(base / "2")
        ps.wait_state("ps_0", 2, AVAILABLE)
        wait_model_server_health(proc, "SERVING")
    finally:
        proc.stop()


def test_health_follows_reloads(tmp_path: Path) -> None:
    """Without file-system polls (the agent's default for a PS), each HandleReloadConfigRequest moves health:
    serving nothing (``specific {}``, the model manager's abort of a failed first rollout) -> NOT_SERVING; a
    sub-model without versions -> NOT_SERVING; no sub-model at all -> SERVING (nothing to wait for)."""
    base = tmp_path / "ps_0"
    write_version(base, 1)
    args = ["--model_name", "ps_0", "--model_base_path", str(base), "--num_ps", str(NUM_PS),
            "--file_system_poll_wait_seconds", "0"]  # fmt: skip
    with start_ps(tmp_path, args) as proc:
        ps = Ps(proc)
        assert model_server_health(proc) == {"SERVING"}

        def reload(models: dict[str, Path], *, serve_nothing: bool = False) -> None:
            request = model_management_pb2.ReloadConfigRequest()
            request.config.model_config_list.SetInParent()
            for name, path in models.items():
                entry = request.config.model_config_list.config.add(name=name, base_path=str(path))
                if serve_nothing:
                    entry.model_version_policy.specific.SetInParent()
                else:
                    entry.model_version_policy.latest.num_versions = 1
            ps.model_stub.HandleReloadConfigRequest(request, timeout=30)

        reload({"ps_0": base}, serve_nothing=True)
        assert ps.status("ps_0")[1][0] == END
        assert model_server_health(proc) == {"NOT_SERVING"}
        reload({"ps_0": base})
        assert ps.status("ps_0")[1][0] == AVAILABLE
        assert model_server_health(proc) == {"SERVING"}
        (tmp_path / "ps_1").mkdir()  # an export of ps_1 without versions yet
        reload({"ps_0": base, "ps_1": tmp_path / "ps_1"})
        assert ps.status("ps_1") == {}
        assert model_server_health(proc) == {"NOT_SERVING"}
        reload({})
        assert model_server_health(proc) == {"SERVING"}


def test_health_follows_a_reload_whose_caller_stopped_waiting(tmp_path: Path) -> None:
    """A reload cut off by its caller's deadline still loads its versions (``VersionLifecycle.apply_config``);
    health follows once they are settled, with no file-system poll to catch up (the agent's PS default)."""
    base = tmp_path / "ps_0"
    base.mkdir()
    models = (SubModelConfig("ps_0", base, VersionPolicy(PolicyKind.LATEST)),)
    config = PsConfig(port=0, host="127.0.0.1", models=models, file_system_poll_wait_s=0)

    async def health(address: str) -> str:
        return (await asyncio.to_thread(check_health, address, timeout_s=5.0)).status

    def loading(server: PsServer) -> bool:
        version = server.versions.model("ps_0").versions.get(1)
        return version is not None and version.state is State.LOADING

    async def scenario() -> None:
        async with PsServer(config) as server:
            address = f"127.0.0.1:{server.port}"
            assert await health(address) == "NOT_SERVING"
            write_version(base, 1)
            reload = asyncio.create_task(server.reload(models))
            while not loading(server):
                await asyncio.sleep(0)
            reload.cancel()  # the caller gives up while version 1 loads
            with pytest.raises(asyncio.CancelledError):
                await reload
            deadline = time.monotonic() + 30
            while await health(address) != "SERVING":
                assert time.monotonic() < deadline, [(v.version, v.state) for v in server.versions.status("ps_0")]
                await asyncio.sleep(0.05)
            assert server.versions.model("ps_0").versions[1].state is State.AVAILABLE

    asyncio.run(scenario())


def test_grpc_channel_arguments_reach_the_server(tmp_path: Path) -> None:
    """tensorflow_model_server's --grpc_channel_arguments: here a receive limit far below our default 256 MiB."""
    base = tmp_path / "ps_0"
    rows = write_version(base, 1, seed=5)
    args = ["--model_name", "ps_0", "--model_base_path", str(base), "--num_ps", str(NUM_PS),
            "--grpc_channel_arguments", "grpc.max_receive_message_length=4096"]  # fmt: skip
    with start_ps(tmp_path, args) as proc:
        ps = Ps(proc)
        ps.wait_state("ps_0", 1, AVAILABLE)
        fids = np.array(list(rows["alpha"])[:5], dtype=np.int64)
        assert ps.lookup("ps_0", {"alpha": fids})[0] == 1  # a small request passes
        with pytest.raises(grpc.RpcError) as refused:
            ps.lookup("ps_0", {"alpha": np.zeros(2048, np.int64)})  # 16 KiB of fids
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
        assert ps.lookup("ps_0", {"alpha": fids})[0] == 1  # and the server keeps serving
