"""A model whose tables are keyed by raw v1 fids (``"instance_fid_v1": "keep"``), served by a real entry in front
of two real PS processes: scores match ``entry_reference.ReferenceScorer``, which reads the export itself.

The demo export puts the item table on slots 516-518, so half the fids have bit 63 set (negative int64) and are
sharded by floor modulo. An entry that converted the v1 fids to v2 would miss every row and score all zeros.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from entry_reference import ReferenceScorer, assert_predict_matches_reference
from test_entry_cluster import Cluster

from monolith_serving.client.inputs import (
    LogicalExample,
    encode_instances,
    encode_tf_examples,
    random_examples,
)
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.serving_spec import InstanceFidV1, load_serving_spec

pytestmark = pytest.mark.integration

ROWS = 200


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    export = tmp_path_factory.mktemp("keep-v1-export")
    write_demo(DemoOptions(out=export, num_ps=2, rows=ROWS, instance_fid_v1=InstanceFidV1.KEEP))
    running = Cluster(export, tmp_path_factory.mktemp("keep-v1-logs"))
    try:
        yield running
    finally:
        running.stop()


def test_v1_keyed_tables_score_like_the_reference(cluster: Cluster) -> None:
    spec = load_serving_spec(cluster.export / "entry" / "1")
    assert spec.instance_fid_v1 is InstanceFidV1.KEEP
    reference = ReferenceScorer(cluster.export, 1)
    # rows + 40: some fids are in no table (zeros there too).
    examples = random_examples(spec, 12, np.random.default_rng(21), rows=ROWS + 40)
    table_of = {f.name: f.table for f in spec.features}
    hits = [
        fid
        for example in examples
        for name, fids in example.sparse.items()
        for fid in fids
        if fid in reference.tables[table_of[name]]
    ]
    assert any(fid >> 63 for fid in hits) and any(not fid >> 63 for fid in hits)  # both signs are looked up
    expected = reference.scores(examples)
    all_missed = reference.scores([LogicalExample({}, example.dense) for example in examples])
    assert not np.allclose(expected, all_missed, rtol=1e-5, atol=1e-6)  # what a converting entry would return
    requests = {
        "instances (v1 fids)": {"instances": encode_instances(spec, examples)},
        "instances (named lists)": {"instances": encode_instances(spec, examples, named={"user_hist", "item_id"})},
        "examples (tf.Example)": {"examples": encode_tf_examples(examples)},
    }
    for label, inputs in requests.items():
        assert_predict_matches_reference(cluster.entry.address, cluster.export, examples, inputs=inputs, label=label)
