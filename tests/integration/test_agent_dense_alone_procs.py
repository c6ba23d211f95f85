"""dense_alone end to end: a mixed v1 agent (real process, real ZooKeeper) runs ps + dense + entry; the
entry pools and calls the dense server, and the scores equal the pure-numpy reference."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from agent_procs import AgentProcess, children, replica_stats, wait_for
from entry_reference import ReferenceScorer, assert_predict_matches_reference
from kazoo.client import KazooClient
from procs import free_port
from zk_harness import ZooKeeperServer

from monolith_serving.client.inputs import random_examples
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import load_serving_spec

pytestmark = pytest.mark.integration

ROWS = 200
AVAILABLE = 30


def test_mixed_agent_with_dense_alone_serves_through_the_dense_server(
    zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    alone, plain = tmp_path / "alone", tmp_path / "plain"
    write_demo(DemoOptions(out=alone, num_ps=2, rows=ROWS, dense_alone=True))
    write_demo(DemoOptions(out=plain, num_ps=2, rows=ROWS))
    ports = {name: free_port() for name in ("PORT2", "PORT3", "PORT5", "PORT8")}
    conf = (
        f"bzid dal\nbase_name demo\nbase_path {alone}\nnum_ps 2\nzk_servers {zk_server.hosts}\n"
        "update_model_status_interval 0.3\nstand_alone_serving true\ndense_alone true\n"
    )
    agent = AgentProcess(tmp_path, "mixed-dense", conf, {k: str(v) for k, v in ports.items()}, "--drain_s=0.5")
    zk = KazooClient(hosts=zk_server.hosts)
    zk.start(timeout=30)
    root = "/dal/service/demo"
    try:
        agent.start()
        want = {"ps:0/0": AVAILABLE, "ps:1/0": AVAILABLE, "dense:0/0": AVAILABLE, "entry:0/00000000000": AVAILABLE}
        wait_for("ps, dense and entry AVAILABLE", lambda: replica_stats(zk, root) == want, 120)
        log = agent.log()
        assert "entry waits until dense:0 is AVAILABLE" in log
        # Start order: the dense child came up before the entry was launched.
        assert log.index("child dense started") < log.index("child entry started")

        spec = load_serving_spec(alone / "entry" / "1")
        examples = random_examples(spec, 8, np.random.default_rng(3), rows=ROWS)
        # Moving the MLP to dense_0 changes no number: the reference of the plain export is identical.
        np.testing.assert_array_equal(
            ReferenceScorer(alone, 1).scores(examples), ReferenceScorer(plain, 1).scores(examples)
        )
        assert_predict_matches_reference(f"127.0.0.1:{ports['PORT3']}", alone, examples, retry_unavailable_s=15)

        agent.signal(signal.SIGTERM)
        wait_for("nodes removed", lambda: not any(children(zk, f"{root}/{t}") for t in children(zk, root)), 20, 0.05)
        assert agent.wait(30) == 0
    finally:
        agent.stop()
        zk.stop()
        zk.close()
