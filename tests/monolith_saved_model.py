"""Monolith ``ps_<i>`` SavedModels for tests: the graph nodes that create hash tables from their configs.

The messages are built by protobuf from descriptors spelled out here (in a private pool: TensorFlow's own generated
modules, PyPI tensorflow-protobuf, cannot share the default pool with ours), so readers are checked against
protobuf's own encoding. Field numbers: TensorFlow's saved_model.proto, meta_graph.proto, graph.proto, node_def.proto,
attr_value.proto, tensor.proto (``TF_FIELDS``, checked against tensorflow-protobuf by
tests/unit/test_ps_serving_graph.py) and Monolith's embedding_hash_table.proto and compressor/float_compressor.proto.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


TF_FIELDS = {
    "SavedModel": {"saved_model_schema_version": 1, "meta_graphs": 2},
    "MetaGraphDef": {"graph_def": 2},
    "GraphDef": {"node": 1},
    "NodeDef": {"name": 1, "op": 2, "input": 3, "attr": 5},
    "AttrValue": {"s": 2, "type": 6, "tensor": 8},
    "TensorProto": {"dtype": 1, "string_val": 8},
}


def _classes() -> dict[str, Any]:
    """TF's SavedModel containers and Monolith's EmbeddingHashTableConfig and friends (only the fields used here)."""
    file = descriptor_pb2.FileDescriptorProto(name="test_monolith_saved_model.proto", package="mtest", syntax="proto2")

    def message(name: str, *fields: tuple[str, int, int, str, int]) -> descriptor_pb2.DescriptorProto:
        proto = file.message_type.add(name=name)
        for field_name, number, kind, type_name, label in fields:
            field = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".mtest.{type_name}"
        return proto

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    tf = TF_FIELDS
    message("TensorProto", ("dtype", tf["TensorProto"]["dtype"], F.TYPE_INT32, "", opt),
            ("string_val", tf["TensorProto"]["string_val"], F.TYPE_BYTES, "", rep))  # fmt: skip
    message("AttrValue", ("s", tf["AttrValue"]["s"], F.TYPE_BYTES, "", opt),
            ("type", tf["AttrValue"]["type"], F.TYPE_INT32, "", opt),
            ("tensor", tf["AttrValue"]["tensor"], F.TYPE_MESSAGE, "TensorProto", opt))  # fmt: skip
    node = message("NodeDef", ("name", tf["NodeDef"]["name"], F.TYPE_STRING, "", opt),
                   ("op", tf["NodeDef"]["op"], F.TYPE_STRING, "", opt),
                   ("input", tf["NodeDef"]["input"], F.TYPE_STRING, "", rep),
                   ("attr", tf["NodeDef"]["attr"], F.TYPE_MESSAGE, "NodeDef.AttrEntry", rep))  # fmt: skip
    entry = node.nested_type.add(name="AttrEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".mtest.AttrValue")
    message("GraphDef", ("node", tf["GraphDef"]["node"], F.TYPE_MESSAGE, "NodeDef", rep))
    message("MetaGraphDef", ("graph_def", tf["MetaGraphDef"]["graph_def"], F.TYPE_MESSAGE, "GraphDef", opt))
    message("SavedModel", ("saved_model_schema_version", 1, F.TYPE_INT64, "", opt),
            ("meta_graphs", tf["SavedModel"]["meta_graphs"], F.TYPE_MESSAGE, "MetaGraphDef", rep))  # fmt: skip
    message("Fp32", ("dim_size", 1, F.TYPE_INT32, "", opt))
    message("Fp16", ("dim_size", 1, F.TYPE_INT32, "", opt))
    message("FixedR8", ("dim_size", 1, F.TYPE_INT32, "", opt), ("r", 2, F.TYPE_FLOAT, "", opt))
    message(
        "OneBit",
        ("dim_size", 1, F.TYPE_INT32, "", opt),
        ("step_size", 2, F.TYPE_INT64, "", opt),
        ("init_scale", 3, F.TYPE_FLOAT, "", opt),
        ("max_scale", 4, F.TYPE_FLOAT, "", opt),
        ("amplitude", 5, F.TYPE_FLOAT, "", opt),
    )
    message(
        "FloatCompressorConfig",
        ("fp32", 1, F.TYPE_MESSAGE, "Fp32", opt),
        ("fp16", 2, F.TYPE_MESSAGE, "Fp16", opt),
        ("fixed_r8", 3, F.TYPE_MESSAGE, "FixedR8", opt),
        ("one_bit", 4, F.TYPE_MESSAGE, "OneBit", opt),
    )
    message(
        "Segment",
        ("comp_config", 3, F.TYPE_MESSAGE, "FloatCompressorConfig", opt),
        ("dim_size", 7, F.TYPE_INT32, "", opt),
    )
    message("EntryConfig", ("segments", 1, F.TYPE_MESSAGE, "Segment", rep), ("entry_type", 2, F.TYPE_INT32, "", opt))
    message(
        "EmbeddingHashTableConfig",
        ("entry_config", 1, F.TYPE_MESSAGE, "EntryConfig", opt),
        ("initial_capacity", 2, F.TYPE_UINT64, "", opt),
        ("skip_zero_embedding", 10, F.TYPE_BOOL, "", opt),
    )
    message(
        "MultiEmbeddingHashTableConfig",
        ("names", 1, F.TYPE_STRING, "", rep),
        ("configs", 2, F.TYPE_MESSAGE, "EmbeddingHashTableConfig", rep),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    names = ("EmbeddingHashTableConfig", "MultiEmbeddingHashTableConfig", "SavedModel")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"mtest.{n}")) for n in names}


CLASSES = _classes()
SERVING, TRAINING = 2, 1


def table_config(segments: list[tuple[int, str, dict[str, float]]], entry_type: int = SERVING) -> Any:
    """An EmbeddingHashTableConfig: ``(dim, codec, params)`` per segment."""
    config = CLASSES["EmbeddingHashTableConfig"]()
    config.initial_capacity = 1
    config.entry_config.entry_type = entry_type
    for dim, codec, params in segments:
        segment = config.entry_config.segments.add(dim_size=dim)
        comp = getattr(segment.comp_config, codec)
        comp.SetInParent()
        comp.dim_size = dim
        for key, value in params.items():
            setattr(comp, key, value)
    return config


BIAS_AND_VEC = [(1, "fp32", {}), (4, "fp16", {})]  # FeatureSlotConfig's defaults: an fp32 bias, fp16 embeddings


def _string_const(graph: Any, name: str, value: str) -> str:
    const = graph.node.add(name=name, op="Const")
    const.attr["dtype"].type = 7
    const.attr["value"].tensor.dtype = 7
    const.attr["value"].tensor.string_val.append(value.encode())
    return name


def _restore(graph: Any, op: str, table_node: str, shared_name: str, asset_base: str) -> None:
    """The restore op of a table as Monolith's exporter builds it: ``tf.strings.join([asset_base, shared_name])``."""
    base = _string_const(graph, f"{table_node}/asset_base", asset_base)
    prefix = _string_const(graph, f"{table_node}/prefix", shared_name)
    join = graph.node.add(name=f"{table_node}/StringJoin", op="StringJoin")
    join.input.extend([base, prefix])
    restore = graph.node.add(name=f"{table_node}/restore", op=op)
    restore.input.extend([table_node, join.name])


def saved_model(
    *,
    per_table: dict[str, Any] | None = None,
    multi: dict[str, Any] | None = None,
    partition: int,
    restore_from: str | None = None,
) -> bytes:
    """A SavedModel whose graph creates the given tables as Monolith's export does (plus unrelated nodes); with
    ``restore_from`` (a folder ending in ``/``), also their restore ops reading the dumps there, as an export with
    Monolith's ``shared_embedding`` reads them from the checkpoint's ``<ckpt>.assets/``."""
    model = CLASSES["SavedModel"](saved_model_schema_version=1)
    graph = model.meta_graphs.add().graph_def
    graph.node.add(name="global_step", op="VariableV2")
    for table, config in (per_table or {}).items():
        node = graph.node.add(name=f"MonolithHashTable_{table}_{partition}", op="MonolithHashTable")
        node.input.extend(["dummy_filter", "dummy_sync_client"])
        node.attr["config"].s = config.SerializeToString()
        node.attr["shared_name"].s = f"MonolithHashTable_{table}_{partition}".encode()
        if restore_from is not None:
            _restore(graph, "MonolithHashTableRestore", node.name, node.name, restore_from)
    if multi is not None:
        mconfig = CLASSES["MultiEmbeddingHashTableConfig"]()
        for name in sorted(multi):
            mconfig.names.append(name)
            mconfig.configs.add().CopyFrom(multi[name])
        const = graph.node.add(name="Const_7", op="Const")
        const.attr["dtype"].type = 7
        const.attr["value"].tensor.dtype = 7
        const.attr["value"].tensor.string_val.append(mconfig.SerializeToString())
        node = graph.node.add(name="MonolithMultiHashTable", op="CreateMonolithMultiHashTable")
        node.input.extend(["Const_7", "filter", "sync"])
        node.attr["shared_name"].s = f"MonolithMultiHashTable_{partition}".encode()
        if restore_from is not None:
            _restore(graph, "MonolithMultiHashTableRestore", node.name, f"MonolithMultiHashTable_{partition}",
                     restore_from)  # fmt: skip
    return model.SerializeToString()
