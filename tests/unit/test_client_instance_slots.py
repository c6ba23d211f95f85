"""Random Instances for a spec whose feature slots do not all fit a v1 fid (10 slot bits)."""

from __future__ import annotations

import numpy as np

from monolith_serving.client.inputs import encode_instances, random_examples
from monolith_serving.core.fid_bits import FID_V1_SLOT_SHIFT
from monolith_serving.core.serving_spec import (
    DenseBackend,
    DenseSpec,
    FeatureSpec,
    LayerSpec,
    Pooling,
    ServingSpec,
    TableSpec,
)
from monolith_serving.proto_gen.idl.matrix.proto import proto_parser_pb2


def _spec(slots: tuple[int, ...]) -> ServingSpec:
    return ServingSpec(
        model_name="m",
        num_ps=2,
        tables=(TableSpec("t", 4),),
        features=tuple(FeatureSpec(f"f{slot}", slot, "t", Pooling.SUM) for slot in slots),
        dense_inputs=(),
        dense=DenseSpec(backend=DenseBackend.NUMPY, layers=(LayerSpec("w.npy", "b.npy", "linear"),)),
    )


def test_features_beyond_v1_slots_go_to_named_lists() -> None:
    spec = _spec((5, 1023, 1024, 32767))
    examples = random_examples(spec, 8, np.random.default_rng(3), max_fids=3)
    for example, blob in zip(examples, encode_instances(spec, examples), strict=True):
        instance = proto_parser_pb2.Instance.FromString(blob)
        named = {feature.name: list(feature.fid) for feature in instance.feature}
        v1_slots = sorted({fid >> FID_V1_SLOT_SHIFT for fid in instance.fid})
        assert named == {name: fids for name, fids in example.sparse.items() if name in ("f1024", "f32767")}
        assert set(v1_slots) <= {5, 1023}
        v1_count = sum(len(fids) for name, fids in example.sparse.items() if name in ("f5", "f1023"))
        assert len(instance.fid) == v1_count
