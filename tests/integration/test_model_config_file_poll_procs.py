"""``--model_config_file_poll_wait_seconds`` on real ``monolith-serving ps``, ``dense`` and ``entry`` processes: a
rewritten ``--model_config_file`` is applied at the next poll; a broken one (being rewritten) or one the server
refuses leaves the models serving; as in tensorflow_model_server, the file wins over a HandleReloadConfigRequest at
the next poll."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import pytest
from procs import ServerProcess, free_port, model_server_health

from monolith_serving.client.health import check_health
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)
from monolith_serving.proto_gen.tensorflow_serving.apis.get_model_status_pb2 import ModelVersionStatus

pytestmark = pytest.mark.integration

AVAILABLE = ModelVersionStatus.AVAILABLE
POLL_S = 0.2


def _config_text(name: str, base: Path, version: int) -> str:
    return (
        f'model_config_list {{ config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" '
        f"model_version_policy {{ specific {{ versions: {version} }} }} }} }}\n"
    )


def _write(path: Path, text: str) -> None:
    # Renamed into place, as an agent rewrites it: the server never reads half a file here.
    staged = path.with_suffix(".tmp")
    staged.write_text(text)
    staged.replace(path)


def _available(stub: model_service_pb2_grpc.ModelServiceStub, name: str) -> set[int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    reply = stub.GetModelStatus(request, timeout=5)
    return {status.version for status in reply.model_version_status if status.state == AVAILABLE}


def _wait_available(
    stub: model_service_pb2_grpc.ModelServiceStub, name: str, versions: set[int], proc: ServerProcess
) -> None:
    deadline = time.monotonic() + 30
    while (seen := _available(stub, name)) != versions:
        assert time.monotonic() < deadline, f"AVAILABLE {seen}, not {versions}\n{proc.log_tail()}"
        time.sleep(0.05)


@pytest.mark.parametrize(("command", "name"), [("ps", "ps_0"), ("dense", "dense_0")])
def test_a_rewritten_config_file_is_applied_at_the_next_poll(tmp_path: Path, command: str, name: str) -> None:
    write_demo(DemoOptions(out=tmp_path / "export", num_ps=1, rows=10, dense_alone=True))
    base = tmp_path / "export" / name
    shutil.copytree(base / "1", base / "2")
    config_file = tmp_path / "models.config"
    _write(config_file, _config_text(name, base, 1))
    port = free_port()
    args = ["--port", str(port), "--host", "127.0.0.1", "--model_config_file", str(config_file),
            "--model_config_file_poll_wait_seconds", str(POLL_S)]  # fmt: skip
    proc = ServerProcess(command, args, port=port, log_path=tmp_path / f"{command}.log").start()
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            _wait_available(stub, name, {1}, proc)

            _write(config_file, _config_text(name, base, 2))
            _wait_available(stub, name, {2}, proc)

            # Half-written: each poll step fails and is logged; version 2 keeps serving meanwhile.
            _write(config_file, "model_config_list { config { name: ")
            time.sleep(POLL_S * 5)
            assert _available(stub, name) == {2}
            assert model_server_health(proc) == {"SERVING"}
            assert "model config file" in proc.log_tail()
            # Empty (cut short while rewritten): no action, as tensorflow_model_server takes none for an empty config.
            _write(config_file, "")
            time.sleep(POLL_S * 5)
            assert _available(stub, name) == {2}
            assert "sets no config" in proc.log_tail(200)
            # Refused as the same HandleReloadConfigRequest is (a label on a version not served): nothing changes.
            labelled = _config_text(name, base, 2).replace("} } }", "} } version_labels { key: 'canary' value: 1 } }")
            _write(config_file, labelled)
            time.sleep(POLL_S * 5)
            assert _available(stub, name) == {2}
            assert "canary" in proc.log_tail(200)

            # As tensorflow_model_server (which reloads the file at every poll), the file wins over a reload by RPC.
            _write(config_file, _config_text(name, base, 2))
            applied_before = proc.log_tail(1000).count("differs from the hosted models")
            request = model_management_pb2.ReloadConfigRequest()
            entry = request.config.model_config_list.config.add(name=name, base_path=str(base))
            entry.model_version_policy.specific.versions.append(1)
            stub.HandleReloadConfigRequest(request, timeout=30)
            _wait_available(stub, name, {2}, proc)
            assert proc.log_tail(1000).count("differs from the hosted models") == applied_before + 1

            _write(config_file, _config_text(name, base, 1).replace("specific { versions: 1 }", "all { }"))
            _wait_available(stub, name, {1, 2}, proc)
    finally:
        assert proc.stop() == 0


def test_the_entry_switches_to_a_rewritten_config_file(tmp_path: Path) -> None:
    export = tmp_path / "export"
    write_demo(DemoOptions(out=export, num_ps=1, rows=10))
    for sub_model in ("entry", "ps_0"):
        shutil.copytree(export / sub_model / "1", export / sub_model / "2")
    ps_port, entry_port = free_port(), free_port()
    ps_args = ["--host=127.0.0.1", f"--port={ps_port}", "--model_name=ps_0", f"--model_base_path={export / 'ps_0'}",
               "--model_version_policy=all", "--num_ps=1"]  # fmt: skip
    config_file = tmp_path / "entry.config"
    _write(config_file, _config_text("entry", export / "entry", 1))
    entry_args = [f"--port={entry_port}", "--host=127.0.0.1", f"--ps_targets=127.0.0.1:{ps_port}",
                  f"--model_config_file={config_file}", f"--model_config_file_poll_wait_seconds={POLL_S}"]  # fmt: skip
    with (
        ServerProcess("ps", ps_args, port=ps_port, log_path=tmp_path / "ps.log") as ps,
        ServerProcess("entry", entry_args, port=entry_port, log_path=tmp_path / "entry.log") as entry,
        grpc.insecure_channel(entry.address) as channel,
    ):
        assert ps.port == ps_port
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        _wait_available(stub, "entry", {1}, entry)

        _write(config_file, _config_text("entry", export / "entry", 2))
        _wait_available(stub, "entry", {2}, entry)

        # Refused as a HandleReloadConfigRequest would be (no such folder): logged, version 2 keeps serving, and
        # the file is tried again at every poll, so a fixed file is taken.
        _write(config_file, _config_text("entry", tmp_path / "not-there", 2))
        time.sleep(POLL_S * 5)
        assert _available(stub, "entry") == {2}
        assert check_health(entry.address).serving
        assert "not-there" in entry.log_tail(200)

        _write(config_file, _config_text("entry", export / "entry", 1))
        _wait_available(stub, "entry", {1}, entry)
