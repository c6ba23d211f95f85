"""Monolith tfs_client's command lines parse unchanged: its flag names (``--cmd_type``, ``--model_name``,
``--parallel_num``, ...), absl booleans, comma-separated ``--target``, ``--conf`` for the target and model, and its
defaults when no action word is given. Bad flags are one-line usage errors (exit status 2), never a traceback."""

from __future__ import annotations

import argparse
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from client_cli import run_client

from monolith_serving.client.call_inputs import build_requests
from monolith_serving.client.cli import configure, run
from monolith_serving.client.profile import summarize
from monolith_serving.client.settings import OUR_DEFAULTS, TFS_CLIENT_DEFAULTS, Settings, settings_from_args
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.proto_gen.tensorflow.core.framework import types_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

UNUSED_TARGET = "127.0.0.1:1"
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


def settings(*argv: str, environ: dict[str, str] | None = None) -> Settings:
    return settings_from_args(parse(*argv), environ or {})


def test_a_tfs_client_profile_command_line_parses_unchanged() -> None:
    # monolith/agent_service/profile.sh's run_pro, with a target list as its comment shows.
    got = settings(
        "--target=10.0.0.1:9469,10.0.0.2:9433",
        "--cmd_type=profile",
        "--input_type=example_batch",
        "--batch_size=128",
        "--parallel_num=11",
        "--profile_duration=300",
        "--profile_data_dir=/tmp/profile_data",
        "--has_sort_id",
    )
    assert got.action == "profile"
    assert got.targets == ("10.0.0.1:9469", "10.0.0.2:9433")
    assert (got.workers, got.duration_s, got.inputs.batch_size) == (11, 300.0, 128)
    assert got.inputs.kind == "example_batch" and got.inputs.header.has_sort_id
    assert got.inputs.profile_data_dir == Path("/tmp/profile_data")


@pytest.mark.parametrize(
    ("cmd_type", "action"),
    [("get", "predict"), ("hb", "predict"), ("unload", "predict"), ("status", "status"), ("meta", "meta")],
)
def test_cmd_type_names_the_action_and_anything_else_is_a_predict(cmd_type: str, action: str) -> None:
    assert settings(f"--cmd_type={cmd_type}").action == action


def test_without_an_action_word_tfs_clients_defaults_apply() -> None:
    for got in (settings(), settings("--cmd_type=get")):
        assert got.action == "predict"
        assert (got.inputs.batch_size, got.workers, got.duration_s, got.timeout_s) == (8, 1, 600.0, 30.0)
        assert got.output == "tfs_client"
        assert got.metadata_fields == ("base_path", "num_versions", "signature_name")
    ours = settings("predict")
    defaults = (ours.inputs.batch_size, ours.workers, ours.duration_s, ours.timeout_s, ours.output)
    assert defaults == (4, 16, 10.0, 5.0, "text")
    assert ours.metadata_fields == ("signature_def",) == OUR_DEFAULTS.metadata_fields
    assert TFS_CLIENT_DEFAULTS.batch_size == 8


def test_both_names_of_a_flag_are_one_flag() -> None:
    ours = settings("profile", "--model", "m", "--workers", "3", "--duration_s", "2", "--input_kind", "examples")
    theirs = settings(
        "profile", "--model_name", "m", "--parallel_num", "3", "--profile_duration", "2", "--input_type", "examples"
    )
    assert ours == theirs
    assert (ours.model, ours.workers, ours.duration_s, ours.inputs.kind) == ("m", 3, 2.0, "examples")


@pytest.mark.parametrize(
    ("argv", "value"),
    [
        ((), False),
        (("--has_sort_id",), True),
        (("--has_sort_id=true",), True),
        (("--has_sort_id=T",), True),
        (("--has_sort_id=1",), True),
        (("--has_sort_id=false",), False),
        (("--has_sort_id=0",), False),
        (("--has_sort_id", "--nohas_sort_id"), False),
    ],
)
def test_boolean_flags_take_absl_spellings(argv: tuple[str, ...], value: bool) -> None:
    assert settings("--cmd_type=get", *argv).inputs.header.has_sort_id is value


def test_input_type_defaults_to_dump_with_an_input_file_and_tfs_client_names_map_to_ours() -> None:
    assert settings("--input_file=x.pb").inputs.kind == "example_batch_to_instance"
    assert settings().inputs.kind == "instances"
    assert settings("--input_type=instance").inputs.kind == "instances"
    for name in ("dump", "json", "pbtext", "binary", "example_batch_to_instance"):
        assert settings(f"--input_type={name}").inputs.kind == "example_batch_to_instance"


def _conf(tmp_path: Path, deploy_type: str) -> Path:
    path = tmp_path / f"{deploy_type}.conf"
    lines = ["bzid b", "base_name m", f"base_path {tmp_path}", f"deploy_type {deploy_type}", "num_ps 4", "num_shard 2"]
    if deploy_type == "dense":
        lines.append("dense_alone true")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("deploy_type", "model"), [("entry", "entry"), ("ps", "ps_1"), ("dense", "dense_0")])
def test_conf_gives_the_target_and_the_model(tmp_path: Path, deploy_type: str, model: str) -> None:
    environ = {"PORT3": "9469", "MY_HOST_IP": "10.1.2.3", "SHARD_ID": "1"}
    got = settings(f"--conf={_conf(tmp_path, deploy_type)}", "--cmd_type=status", environ=environ)
    assert (got.targets, got.model) == (("10.1.2.3:9469",), model)
    explicit = settings(f"--conf={_conf(tmp_path, deploy_type)}", "--target=h:1", "--model_name=x", environ=environ)
    assert (explicit.targets, explicit.model) == (("h:1",), "x")


def test_a_conf_without_a_grpc_port_asks_for_target(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="gives no gRPC port .*give --target"):
        settings(f"--conf={_conf(tmp_path, 'entry')}")


def test_an_action_word_and_a_different_cmd_type_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="give the action 'predict' or --cmd_type 'status', not both"):
        settings("predict", "--cmd_type=status")


def test_signature_name_is_sent(tmp_path: Path) -> None:
    (request,) = build_requests(settings("predict", "--signature_name", "other"))
    assert request.model_spec.signature_name == "other"
    (request,) = build_requests(settings("predict"))
    assert request.model_spec.signature_name == "serving_default"


def test_percentiles_are_nearest_rank_as_tfs_client_computes_its_p99() -> None:
    # tfs_client: sorted latencies[round((n - 1) * 0.99)], a latency that was observed (no interpolation).
    result = summarize([ms / 1000 for ms in range(1, 101)], 0, workers=1, elapsed_s=1.0, first_error="")
    assert (result.p50_ms, result.p99_ms) == (51.0, 99.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cmd_type=get", "--input_file=nope.pb"], "error: input file 'nope.pb': No such file or directory"),
        (["--cmd_type=get", "--input_type=instance", "--input_file=eb.pbtxt"], "input file 'eb.pbtxt': record 1"),
        (["--cmd_type=get", "--input_file=eb.pbtxt", "--file_type=pbtxt"], "not a text-format ExampleBatch: 1:"),
        (["--cmd_type=get", "--input_type=dump"], "error: --input_type dump sends an ExampleBatch file"),
        (["--cmd_type=load"], "error: load needs --config_file (tfs_client: --input_file)"),
        (["--cmd_type=load", "--input_file=nope.config"], "error: model config file 'nope.config'"),
        (["--cmd_type=bogus"], "argument --cmd_type"),
        (["--cmd_type=get", "--file_type=xml"], "argument --file_type"),
        (["--cmd_type=get", "--has_sort_id=maybe"], "argument --has_sort_id"),
        (["--cmd_type=profile", "--parallel_num=0"], "argument --workers"),
        (["--cmd_type=get", "--conf=nope.conf"], "error: cannot read conf file 'nope.conf'"),
        (["--cmd_type=get", "--target=a:1,,b:2"], "error: --target 'a:1,,b:2' has an empty address"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_bad_tfs_client_input_is_one_usage_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "eb.pbtxt").write_text("batch_sise: 3\n")
    target = [] if any(arg.startswith("--target") for arg in args) else ["--target", UNUSED_TARGET]
    done = run_client(*args, *target, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == EXIT_USAGE, done.stderr
    assert message in done.stderr, done.stderr


class _RefusingModelService(model_service_pb2_grpc.ModelServiceServicer):
    """Answers a reload with OK on the wire and the refusal in ReloadConfigResponse.status, as TF Serving may."""

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
        response.status.error_message = "no such base_path"
        return response


def test_a_reload_refused_in_the_response_status_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_RefusingModelService(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        config = tmp_path / "models.config"
        config.write_text('model_config_list { config { name: "entry" base_path: "/nope" } }\n')
        for argv in (("load", "--config_file", str(config)), ("--cmd_type=load", f"--input_file={config}")):
            assert run(parse(*argv, "--target", f"127.0.0.1:{port}")) == EXIT_SERVER_ERROR
            assert capsys.readouterr().err.splitlines()[-1] == "error: INVALID_ARGUMENT: no such base_path"
    finally:
        server.stop(grace=None)


def test_registry_and_absl_logging_flags_of_a_tfs_client_line_are_accepted_and_change_nothing() -> None:
    # tfs_client takes --zk_servers/--bzid from Monolith's agent client, and absl's logging flags as any absl
    # program does: a line carrying them was a usage error here.
    plain = settings("--cmd_type=get", f"--target={UNUSED_TARGET}", "--input_type=example_batch")
    carried = settings(
        "--cmd_type=get", f"--target={UNUSED_TARGET}", "--input_type=example_batch",
        "--zk_servers=10.0.0.1:2181,10.0.0.2:2181", "--bzid=monolith", "--logtostderr", "--alsologtostderr=false",
        "--noshowprefixforinfo", "--v=1", "--verbosity", "2", "--log_dir=/tmp/logs", "--stderrthreshold=info",
    )  # fmt: skip
    assert carried == plain


class _Bfloat16Entry(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    """Answers every Predict with a DT_BFLOAT16 output, a dtype our client cannot decode."""

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        response = predict_pb2.PredictResponse()
        response.model_spec.name = "entry"
        score = response.outputs["score"]
        score.dtype = types_pb2.DT_BFLOAT16
        score.tensor_shape.dim.add(size=1)
        score.half_val.append(0x3F00)  # 0.5
        return response


def test_tfs_client_output_prints_the_response_whatever_its_dtypes(capsys: pytest.CaptureFixture[str]) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_Bfloat16Entry(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        # tfs_client's print(response): a line of tfs_client works on any model.
        assert run(parse("--cmd_type=get", f"--target=127.0.0.1:{port}", "--input_type=instances")) == 0
        assert "dtype: DT_BFLOAT16" in capsys.readouterr().out
        # Our own output decodes the outputs; one it cannot decode is an error naming it.
        assert run(parse("predict", "--target", f"127.0.0.1:{port}")) == EXIT_SERVER_ERROR
        assert "'score': unsupported dtype DT_BFLOAT16" in capsys.readouterr().err
    finally:
        server.stop(grace=None)
