"""Monolith tfs_client command lines and data files, unchanged, against a real ``monolith-serving demo``: every input
file kind (framed Instances, a framed ExampleBatch behind each header, a text ExampleBatch) scores like the
pure-numpy reference; status, meta and load answer in tfs_client's output (protobuf text format); ``--conf`` finds
the entry from $PORT3 and $MY_HOST_IP; profile sends the files of --profile_data_dir to every target of a list."""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from client_cli import run_client
from entry_reference import ReferenceScorer, assert_outputs_match
from google.protobuf import text_format
from procs import OutputLines, free_port
from proxy_procs import FakeEntry

from monolith_serving.client.inputs import LogicalExample, encode_example_batch, encode_instances, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import ServingSpec, load_serving_spec
from monolith_serving.proto_gen.idl.matrix.proto import example_pb2, line_id_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2, predict_pb2

pytestmark = pytest.mark.integration

ROWS = 200
BATCH = 5


@dataclass(frozen=True)
class Demo:
    export: Path
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def spec(self) -> ServingSpec:
        return load_serving_spec(self.export / "entry" / "1")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    export = tmp_path_factory.mktemp("tfs_client") / "export"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS))
    port = free_port()
    command = [sys.executable, "-m", "monolith_serving", "demo", "--model", str(export), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        OutputLines(process).wait_for("entry serving model", timeout_s=90)
        yield Demo(export, port)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_tfs_client(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """tfs_client's spelling: no action word; whatever it exits with, never a traceback."""
    done = run_client(*args, env=env, timeout_s=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def framed(messages: list[bytes], header: bytes = b"") -> bytes:
    """Monolith's data file (data_gen_utils.gen_random_data_file): header, uint64 LE length, message."""
    return b"".join(header + struct.pack("<Q", len(message)) + message for message in messages)


def monolith_example_batch(spec: ServingSpec, examples: list[LogicalExample]) -> example_pb2.ExampleBatch:
    """An ExampleBatch as Monolith's training data has them: one feature in fid_v1_list, a __LINE_ID__ list."""
    batch = example_pb2.ExampleBatch.FromString(encode_example_batch(spec, examples, v1=[spec.features[0].name]))
    line_ids = batch.named_feature_list.add(name="__LINE_ID__")
    for uid in range(len(examples)):
        line_ids.feature.add().bytes_list.value.append(line_id_pb2.LineId(uid=uid, sample_rate=0.5).SerializeToString())
    return batch


def response_printed(done: subprocess.CompletedProcess[str]) -> predict_pb2.PredictResponse:
    """A PredictResponse printed as tfs_client prints it (protobuf text format)."""
    assert done.returncode == 0, done.stderr
    return text_format.Parse(done.stdout, predict_pb2.PredictResponse())


SORT_ID = struct.pack("<Q", 3) + b"sid"
LAGRANGEX = b"\x00\x07\x08\x09\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("kind", "file_name", "flags"),
    [
        ("instance", "inst.pb", ["--input_type=instance", f"--batch_size={BATCH}"]),
        ("example_batch", "eb_sort_id.pb", ["--input_type=example_batch", "--has_sort_id"]),
        ("pbtxt", "eb.pbtxt", ["--file_type=pbtxt"]),  # the default input type, dump: sent as Instances
        ("lagrangex", "eb_lagrangex.pb", ["--input_type=example_batch_to_instance", "--lagrangex_header"]),
    ],
)
def test_every_tfs_client_input_file_scores_like_the_reference(
    demo: Demo, tmp_path: Path, kind: str, file_name: str, flags: list[str]
) -> None:
    spec = demo.spec
    examples = random_examples(spec, BATCH, np.random.default_rng(11), rows=ROWS)
    path = tmp_path / file_name
    batch = monolith_example_batch(spec, examples)
    if kind == "instance":
        path.write_bytes(framed(encode_instances(spec, examples, named={f.name for f in spec.features[1:]})))
    elif kind == "example_batch":
        path.write_bytes(framed([batch.SerializeToString()], SORT_ID))
    elif kind == "pbtxt":
        path.write_text(text_format.MessageToString(batch))
    else:
        path.write_bytes(framed([batch.SerializeToString()], LAGRANGEX))
    done = run_tfs_client(f"--target={demo.address}", "--cmd_type=get", f"--input_file={path}", *flags)
    assert_outputs_match(response_printed(done), ReferenceScorer(demo.export, 1).outputs(examples))


def test_conf_finds_the_entry_and_status_and_meta_print_their_responses(demo: Demo, tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text(f"bzid b\nbase_name m\nbase_path {demo.export}\ndeploy_type entry\n")
    env = {"PORT3": str(demo.port), "MY_HOST_IP": "127.0.0.1"}
    done = run_tfs_client(f"--conf={conf}", "--cmd_type=status", env=env)
    assert done.returncode == 0, done.stderr
    status = text_format.Parse(done.stdout, get_model_status_pb2.GetModelStatusResponse())
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]  # AVAILABLE
    done = run_tfs_client(f"--conf={conf}", "--cmd_type=meta", env=env)
    assert done.returncode == 0, done.stderr
    keys = re.findall(r'key: "(\w+)"', done.stdout)
    assert sorted(keys) == ["base_path", "num_versions", "signature_name"], done.stdout
    assert f'value: "{demo.export / "entry"}"' in done.stdout


def test_load_reads_the_config_from_input_file(demo: Demo, tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "entry" base_path: "{demo.export / "entry"}" }} }}\n')
    done = run_tfs_client(f"--target={demo.address}", "--cmd_type=load", f"--input_file={config}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("load done!"), done.stdout


def test_profile_sends_the_data_folders_files_to_every_target(demo: Demo, tmp_path: Path) -> None:
    spec = demo.spec
    data = tmp_path / "profile_data"
    data.mkdir()
    for seed in range(2):
        examples = random_examples(spec, BATCH, np.random.default_rng(seed), rows=ROWS)
        (data / f"{seed}.pb").write_bytes(framed([monolith_example_batch(spec, examples).SerializeToString()], SORT_ID))
    targets = f"--target={demo.address},{demo.address}"
    common = [targets, "--cmd_type=profile", "--parallel_num=2", "--profile_duration=1", "--has_sort_id"]
    done = run_tfs_client(*common, f"--profile_data_dir={data}")
    assert done.returncode == 0, done.stderr
    match = re.fullmatch(
        r"\[Profile\] Count: (\d+), Avg Latency: [\d.]+, P99 Latency: [\d.]+, QPS: [\d.]+\n", done.stdout
    )
    assert match is not None and int(match[1]) > 0, done.stdout
    # The files are what is sent: one the entry refuses fails every request, naming its feature.
    refused = example_pb2.ExampleBatch(batch_size=1)
    refused.named_feature_list.add(name="not_in_the_spec").feature.add().fid_v2_list.value.append(1)
    for path in data.iterdir():
        path.write_bytes(framed([refused.SerializeToString()], SORT_ID))
    done = run_tfs_client(*common, f"--profile_data_dir={data}")
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("[Profile] Count: 0,"), done.stdout
    assert "not_in_the_spec" in done.stderr.splitlines()[-1], done.stderr


def test_profile_spreads_its_requests_over_every_target(tmp_path: Path) -> None:
    """Two targets, of which only the first serves the model ``entry``: both get requests, so some succeed and
    the others fail NOT_FOUND (tfs_client picks a target per request; we take turns)."""
    with FakeEntry("a", tmp_path) as serving, FakeEntry("b", tmp_path, extra=["--models", "other"]) as other:
        assert isinstance(serving, FakeEntry) and isinstance(other, FakeEntry)
        targets = f"--target={serving.address},{other.address}"
        done = run_tfs_client(
            targets, "--cmd_type=profile", "--parallel_num=2", "--profile_duration=1", "--output=json"
        )
    summary = json.loads(done.stdout)
    assert summary["count"] > 0 and summary["errors"] > 0, summary
    assert summary["first_error"].startswith("NOT_FOUND: "), summary
    assert done.returncode == 1, done.stderr


def test_a_deadline_too_short_is_one_error_line(demo: Demo) -> None:
    started = time.monotonic()
    done = run_tfs_client(f"--target={demo.address}", "--cmd_type=get", "--timeout_s=0.0001")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith("error: DEADLINE_EXCEEDED: ")
    assert time.monotonic() - started < 30
