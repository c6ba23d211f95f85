"""``monolith-serving demo`` as users run it (a real process tree on loopback): plain and dense_alone exports
both answer Predict with the scores of the pure-numpy reference, and Ctrl-C (SIGINT) stops every child."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from entry_reference import ReferenceScorer
from procs import OutputLines, free_port

from monolith_serving.client.inputs import encode_instances, predict_request, random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec
from monolith_serving.core.tensor_codec import from_tensor_proto
from monolith_serving.proto_gen.tensorflow_serving.apis import prediction_service_pb2_grpc

pytestmark = pytest.mark.integration

ROWS = 200


@pytest.mark.parametrize("dense_alone", [False, True], ids=["plain", "dense_alone"])
def test_demo_serves_the_reference_scores_and_stops_its_children(tmp_path: Path, dense_alone: bool) -> None:
    export = tmp_path / "export"
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS, dense_alone=dense_alone))
    port = free_port()
    cmd = [sys.executable, "-m", "monolith_serving", "demo", "--model", str(export), "--port", str(port)]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = OutputLines(process).wait_for("entry serving model", timeout_s=90)
        assert ("dense server on port" in line) is dense_alone, line
        spec = load_serving_spec(export / "entry" / "1")
        examples = random_examples(spec, 8, np.random.default_rng(5), rows=ROWS)
        request = predict_request("entry", {"instances": encode_instances(spec, examples)})
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=20)
        scores = from_tensor_proto(response.outputs["scores"], "scores")
        np.testing.assert_allclose(scores, ReferenceScorer(export, 1).scores(examples), rtol=1e-5, atol=1e-6)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # Every child went with it: nothing listens on the entry's, the shards' or the dense server's port.
    ports = [int(p) for p in re.findall(r"\b(\d{4,5})\b", line.split(" at ", 1)[1])]
    assert ports[0] == port and len(ports) == (4 if dense_alone else 3), line  # entry, 2 shards (, dense)
    for listening in ports:
        with grpc.insecure_channel(f"127.0.0.1:{listening}") as channel, pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=1)
