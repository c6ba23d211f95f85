"""Building entry requests: random examples that hit a serving spec's tables, in all three input kinds.

An example is first drawn as plain data (``LogicalExample``: the fids the tables are keyed by per sparse feature,
floats per dense input) and then encoded, so the same examples can be sent as Instances, an ExampleBatch or
tf.Examples. Random fids are ``slot << 48 | k`` with k < ``rows`` — the rows ``export-demo`` writes. For a spec
that keeps an Instance's v1 fids (``instance_fid_v1`` keep: tables keyed by v1 fids) they are ``slot << 54 | k``,
sent as they are in ``Instance.fid`` or a tf.Example; such a model takes no ExampleBatch (below).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.fid_bits import FID_V1_SLOT_SHIFT, FID_V1_SLOTS, FID_V2_HASH_MASK, FID_V2_SLOT_SHIFT
from monolith_serving.core.predict_signature import DEFAULT_SIGNATURE, INPUT_KINDS
from monolith_serving.core.serving_spec import InstanceFidV1, ServingSpec
from monolith_serving.core.tensor_codec import to_tensor_proto
from monolith_serving.proto_gen.idl.matrix.proto import example_pb2 as monolith_example_pb2
from monolith_serving.proto_gen.idl.matrix.proto import proto_parser_pb2
from monolith_serving.proto_gen.tensorflow.core.example import example_pb2 as tf_example_pb2
from monolith_serving.proto_gen.tensorflow_serving.apis import predict_pb2

# Random fids are ``slot << 48 | k``: a k of 2**48 or more would spill into the slot bits.
MAX_ROWS = FID_V2_HASH_MASK + 1


@dataclass(frozen=True)
class LogicalExample:
    # feature name -> fids as the tables key them (unsigned 64-bit values): v2 fids, or v1 fids for a spec with
    # ``instance_fid_v1`` keep
    sparse: dict[str, list[int]]
    dense: dict[str, list[float]]  # dense input name -> values


def keeps_v1(spec: ServingSpec) -> bool:
    """Whether the spec's tables are keyed by v1 fids (an Instance's v1 fids are looked up unconverted)."""
    return spec.instance_fid_v1 is InstanceFidV1.KEEP


def v2_to_v1(fid: int) -> int:
    """The v1 spelling of a v2 fid whose hash fits 48 bits: slot << 54 | hash."""
    return ((fid >> FID_V2_SLOT_SHIFT) << FID_V1_SLOT_SHIFT) | (fid & FID_V2_HASH_MASK)


def random_examples(
    spec: ServingSpec, batch: int, rng: np.random.Generator, *, rows: int = 1000, max_fids: int = 4
) -> list[LogicalExample]:
    """``batch`` examples; each sparse feature gets 0..max_fids fids (0 now and then to test empties).

    Raises ValueError unless ``1 <= rows <= MAX_ROWS``."""
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"rows must be from 1 to {MAX_ROWS}, got {rows}")
    shift = FID_V1_SLOT_SHIFT if keeps_v1(spec) else FID_V2_SLOT_SHIFT
    examples = []
    for _ in range(batch):
        sparse = {}
        for feature in spec.features:
            count = int(rng.integers(0, max_fids + 1))
            ks = rng.integers(0, rows, size=count)
            sparse[feature.name] = [(feature.slot << shift) | int(k) for k in ks]
        dense = {d.name: [float(v) for v in rng.standard_normal(d.dim).astype(np.float32)] for d in spec.dense_inputs}
        examples.append(LogicalExample(sparse, dense))
    return examples


def encode_instances(
    spec: ServingSpec, examples: Sequence[LogicalExample], *, named: Collection[str] = ()
) -> list[bytes]:
    """Instances: features in ``named``, and those on a slot no v1 fid can name (10 slot bits: ``FID_V1_SLOTS``), go to
    ``feature`` lists (the fids as they are); the others to ``fid`` (v1: the v2 fids' v1 spelling, or the fids
    themselves when the spec keeps v1 fids)."""
    blobs = []
    slots = {f.name: f.slot for f in spec.features}
    keep = keeps_v1(spec)
    for example in examples:
        instance = proto_parser_pb2.Instance()
        for name, fids in example.sparse.items():
            if name in named or slots[name] >= FID_V1_SLOTS:
                instance.feature.add(name=name, fid=fids)
            elif keep:
                assert all(fid >> FID_V1_SLOT_SHIFT == slots[name] for fid in fids)
                instance.fid.extend(fids)
            else:
                assert all(fid >> FID_V2_SLOT_SHIFT == slots[name] for fid in fids)
                instance.fid.extend(v2_to_v1(fid) for fid in fids)
        for name, values in example.dense.items():
            instance.feature.add(name=name, float_value=values)
        blobs.append(instance.SerializeToString())
    return blobs


def encode_example_batch(
    spec: ServingSpec,
    examples: Sequence[LogicalExample],
    *,
    shared: Collection[str] = (),
    v1: Collection[str] = (),
) -> bytes:
    """One ExampleBatch. Names in ``shared`` become SHARED lists holding the *first* example's value (the
    caller makes every example agree); names in ``v1`` use fid_v1_list.

    InvalidArgumentError for a spec that keeps v1 fids: its tables hold v1 keys, and an ExampleBatch's v1 fids
    are always converted to v2 (by Monolith and by the entry), so no ExampleBatch reaches its rows."""
    if keeps_v1(spec):
        raise InvalidArgumentError(
            "input type example_batch: the serving spec keys its tables by v1 fids ('instance_fid_v1': 'keep'), "
            "which an ExampleBatch cannot address (its fid_v1_list is converted to v2 fids); send instances or examples"
        )
    batch = monolith_example_pb2.ExampleBatch(batch_size=len(examples))
    for feature in spec.features:
        nfl = batch.named_feature_list.add(name=feature.name)
        chosen = examples[:1] if feature.name in shared else examples
        if feature.name in shared:
            nfl.type = monolith_example_pb2.SHARED
        for example in chosen:
            fids = example.sparse.get(feature.name, [])
            item = nfl.feature.add()
            if feature.name in v1:
                item.fid_v1_list.value.extend(v2_to_v1(f) for f in fids)
            else:
                item.fid_v2_list.value.extend(fids)
    for dense_input in spec.dense_inputs:
        nfl = batch.named_feature_list.add(name=dense_input.name)
        chosen = examples[:1] if dense_input.name in shared else examples
        if dense_input.name in shared:
            nfl.type = monolith_example_pb2.SHARED
        for example in chosen:
            nfl.feature.add().float_list.value.extend(example.dense.get(dense_input.name, []))
    # A training-only list the entry must skip.
    label = batch.named_feature_list.add(name="__LABEL__")
    for _ in examples:
        label.feature.add().float_list.value.append(0.0)
    return batch.SerializeToString()


def encode_tf_examples(examples: Sequence[LogicalExample]) -> list[bytes]:
    """tf.Examples: int64_list of the fids (as signed int64) per sparse feature, float_list per dense input."""
    blobs = []
    for example in examples:
        proto = tf_example_pb2.Example()
        features = proto.features.feature
        for name, fids in example.sparse.items():
            features[name].int64_list.value.extend(int(np.uint64(f).astype(np.int64)) for f in fids)
        for name, values in example.dense.items():
            features[name].float_list.value.extend(values)
        blobs.append(proto.SerializeToString())
    return blobs


def encode(spec: ServingSpec, kind: str, examples: Sequence[LogicalExample]) -> dict[str, list[bytes]]:
    """The request inputs for ``kind`` (default encodings)."""
    if kind == "instances":
        return {"instances": encode_instances(spec, examples)}
    if kind == "example_batch":
        return {"example_batch": [encode_example_batch(spec, examples)]}
    if kind == "examples":
        return {"examples": encode_tf_examples(examples)}
    raise ValueError(f"unknown input kind {kind!r}; expected one of {', '.join(INPUT_KINDS)}")


def predict_request(
    model_name: str,
    inputs: dict[str, list[bytes]],
    *,
    version: int | None = None,
    signature_name: str = DEFAULT_SIGNATURE,
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    for name, blobs in inputs.items():
        request.inputs[name].CopyFrom(to_tensor_proto(np.array(blobs, dtype=object)))
    return request
