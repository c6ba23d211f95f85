"""Instances whose sparse features arrive as sequence lists (``Feature.fid_list``, field 6), served by a real entry
in front of two real PS processes: scores match ``entry_reference.ReferenceScorer``.

Monolith's Instance parser takes a Feature's ``fid`` values and then those of every ``fid_list`` entry; an entry
that read only ``fid`` would pool these features from nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_entry_cluster
from entry_reference import ReferenceScorer, assert_predict_matches_reference
from test_entry_cluster import Cluster, make_examples

from monolith_serving.client.inputs import LogicalExample
from monolith_serving.core.serving_spec import ServingSpec, load_serving_spec
from monolith_serving.proto_gen.idl.matrix.proto import proto_parser_pb2

pytestmark = pytest.mark.integration

# That module's fixture, for this module: the demo export served by two PS processes and an entry.
cluster = test_entry_cluster.cluster


def encode_with_fid_lists(spec: ServingSpec, examples: list[LogicalExample]) -> list[bytes]:
    """Every sparse feature as a named Feature: its first fid in ``fid``, the rest in ``fid_list`` entries of up to
    two fids each, so order across the two fields matters to firstn pooling."""
    blobs = []
    for example in examples:
        instance = proto_parser_pb2.Instance()
        for feature in spec.features:
            fids = example.sparse.get(feature.name, [])
            named = instance.feature.add(name=feature.name, fid=fids[:1])
            for k in range(1, len(fids), 2):
                named.fid_list.add(value=fids[k : k + 2])
        for name, values in example.dense.items():
            instance.feature.add(name=name, float_value=values)
        blobs.append(instance.SerializeToString())
    return blobs


def test_sequence_fid_lists_score_like_the_reference(cluster: Cluster) -> None:
    spec = load_serving_spec(cluster.export / "entry" / "1")
    reference = ReferenceScorer(cluster.export, 1)
    examples = make_examples(spec, 12, seed=5)
    assert any(len(fids) > 2 for example in examples for fids in example.sparse.values())  # fid_list entries occur
    expected = reference.scores(examples)
    first_only = reference.scores([LogicalExample({n: f[:1] for n, f in e.sparse.items()}, e.dense) for e in examples])
    assert not np.allclose(expected, first_only, rtol=1e-5, atol=1e-6)  # what an entry reading only ``fid`` returns
    inputs = {"instances": encode_with_fid_lists(spec, examples)}
    assert_predict_matches_reference(cluster.entry.address, cluster.export, examples, inputs=inputs)
