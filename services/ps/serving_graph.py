"""The table configs a Monolith ``ps_<i>`` SavedModel carries: each hash table's segments (dims and serving codecs).

A Monolith export's ``ps_<i>/<version>/saved_model.pb`` is the graph its serving PS runs. The graph creates the
hash tables from serialized configs (package ``monolith.hash_table``, proto2, embedding_hash_table.proto):

- per-table hash tables: a ``MonolithHashTable`` node, attr ``shared_name`` = ``MonolithHashTable_<table>_<k>`` (the
  dump files' name without ``-<j>-of-<m>``), attr ``config`` = an ``EmbeddingHashTableConfig``;
- the native multi-hash table: a ``CreateMonolithMultiHashTable`` node, attr ``shared_name`` =
  ``MonolithMultiHashTable_<k>``, whose first input is a ``Const`` string tensor holding a
  ``MultiEmbeddingHashTableConfig { repeated string names = 1; repeated EmbeddingHashTableConfig configs = 2; }``.

Where the graph restores the tables from (``MonolithHashTableRestore`` / ``MonolithMultiHashTableRestore``, input 1 =
the dump basename, a ``StringJoin`` of constants): ``<version>/assets/<table>`` when the export copied the dumps in,
or, with Monolith's default ``shared_embedding``, the training checkpoint's own ``<ckpt>.assets/<table>``
(``restore_basenames``).

``EmbeddingHashTableConfig.entry_config = 1`` is an ``EntryConfig { repeated Segment segments = 1; optional EntryType
entry_type = 2 [default TRAINING]; }`` (SERVING = 2 in an export), ``Segment { comp_config = 3; int32 dim_size = 7;
}``, ``FloatCompressorConfig { oneof type { Fp32 fp32 = 1; Fp16 fp16 = 2; FixedR8 fixed_r8 = 3 { float r = 2
[default 1.0]; } OneBit one_bit = 4 { float init_scale = 3 [default 1.0]; float amplitude = 5 [default 0.1]; } } }``.

The TF containers: ``SavedModel.meta_graphs = 2``, ``MetaGraphDef.graph_def = 2``, ``GraphDef.node = 1``, ``NodeDef
{ name = 1; op = 2; input = 3; attr = 5 (map<string, AttrValue>) }``, ``AttrValue { s = 2; tensor = 8; }``,
``TensorProto.string_val = 8``. Read with ``core.proto_read``: only these fields are looked at.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.hash_table_dump import NATIVE_MULTI_DUMP_PREFIX, parse_table_resource_name
from monolith_serving.core.proto_read import (
    WireFormatError,
    fields,
    first_bytes,
    last_float,
    last_varint,
    repeated_bytes,
)
from monolith_serving.core.proto_wire import LENGTH_DELIMITED
from monolith_serving.ps.serving_codec import CODECS, FIXED_R8, ONE_BIT, Codec, Segment, ServingLayout

logger = logging.getLogger(__name__)

SAVED_MODEL_FILE = "saved_model.pb"
_SERVING_ENTRY = 2  # EntryConfig.EntryType.SERVING
_PER_TABLE_OP = "MonolithHashTable"
_MULTI_TABLE_OP = "CreateMonolithMultiHashTable"
_RESTORE_OPS = frozenset({"MonolithHashTableRestore", "MonolithMultiHashTableRestore"})
_PASS_THROUGH_OPS = frozenset({"Identity"})
_MAX_STRING_DEPTH = 16  # StringJoins of StringJoins: Monolith's graphs nest two; a cycle must not recurse forever


class GraphFormatError(InvalidArgumentError):
    """A saved_model.pb whose configs are valid wire data but not a table config this reader can use."""


def _segment(data: bytes) -> Segment | None:
    """A ``Segment`` with its serving codec, or None when it names none (Monolith then has no serving form)."""
    dim = last_varint(data, 7, 0)
    if dim >= 1 << 63:
        dim -= 1 << 64  # a negative int32 travels sign-extended; refused by the caller like any dim outside int32
    comp = first_bytes(data, 3)
    if comp is None:
        return None
    codec: Codec | None = None
    params = b""
    for field, wire, value in fields(comp):
        if 1 <= field <= len(CODECS) and wire == LENGTH_DELIMITED:
            assert isinstance(value, bytes)
            codec, params = CODECS[field - 1], value  # a oneof: the last one set wins
    if codec is None:
        return None
    if codec == FIXED_R8:
        return Segment(dim, codec, r=last_float(params, 2, 1.0))
    if codec == ONE_BIT:
        return Segment(dim, codec, init_scale=last_float(params, 3, 1.0), amplitude=last_float(params, 5, 0.1))
    return Segment(dim, codec)


def table_layout(config: bytes) -> ServingLayout | None:
    """The serving layout an ``EmbeddingHashTableConfig`` describes; None unless it is a SERVING entry whose every
    segment names a codec (a training entry, which an export never holds, keeps rows as they are)."""
    entry = first_bytes(config, 1)
    if entry is None or last_varint(entry, 2, 1) != _SERVING_ENTRY:
        return None
    segments = []
    for data in repeated_bytes(entry, 1):
        segment = _segment(data)
        if segment is None:
            return None
        if not 0 < segment.dim < 1 << 31:
            raise GraphFormatError(f"segment dim_size {segment.dim}")
        segments.append(segment)
    return ServingLayout(tuple(segments)) if segments else None


class _Node:
    def __init__(self, data: bytes) -> None:
        self.name = self.op = ""
        self.inputs: list[str] = []
        self.attrs: dict[str, bytes] = {}
        for field, wire, value in fields(data):
            if wire != LENGTH_DELIMITED:
                continue
            assert isinstance(value, bytes)
            if field == 1:
                self.name = value.decode("utf-8", "replace")
            elif field == 2:
                self.op = value.decode("utf-8", "replace")
            elif field == 3:
                self.inputs.append(value.decode("utf-8", "replace"))
            elif field == 5:
                key, attr = first_bytes(value, 1), first_bytes(value, 2)
                if key is not None:
                    self.attrs[key.decode("utf-8", "replace")] = attr or b""

    def attr_string(self, name: str) -> bytes | None:
        attr = self.attrs.get(name)
        return None if attr is None else first_bytes(attr, 2)


def _nodes(saved_model: bytes) -> Iterator[_Node]:
    for meta_graph in repeated_bytes(saved_model, 2):
        for graph in repeated_bytes(meta_graph, 2):
            for node in repeated_bytes(graph, 1):
                yield _Node(node)


def _const_string(node: _Node) -> bytes | None:
    tensor = first_bytes(node.attrs.get("value", b""), 8)
    return None if tensor is None else first_bytes(tensor, 8)


def _multi_table_layouts(config: bytes) -> dict[str, ServingLayout | None]:
    names = [n.decode("utf-8", "replace") for n in repeated_bytes(config, 1)]
    configs = list(repeated_bytes(config, 2))
    if len(names) != len(configs):
        raise GraphFormatError(f"multi-hash-table config: {len(names)} names but {len(configs)} configs")
    return {name: table_layout(c) for name, c in zip(names, configs, strict=True)}


def graph_table_layouts(saved_model: bytes, partition: int) -> dict[str, ServingLayout | None]:
    """``{table: layout}`` for every hash table of PS ``partition`` the SavedModel creates (tables named as in the
    dump files; None: the graph names no serving codec for it). Raises WireFormatError on malformed wire data,
    GraphFormatError on a config it cannot use."""
    nodes = list(_nodes(saved_model))
    by_name = {node.name: node for node in nodes}
    layouts: dict[str, ServingLayout | None] = {}
    for node in nodes:
        shared = (node.attr_string("shared_name") or b"").decode("utf-8", "replace")
        if node.op == _PER_TABLE_OP:
            resource = parse_table_resource_name(shared)
            config = node.attr_string("config")
            if resource is not None and resource.partition == partition and config is not None:
                layouts[resource.table] = table_layout(config)
        elif node.op == _MULTI_TABLE_OP and shared == f"{NATIVE_MULTI_DUMP_PREFIX}{partition}" and node.inputs:
            source = by_name.get(node.inputs[0].lstrip("^").split(":")[0])
            config = None if source is None or source.op != "Const" else _const_string(source)
            if config is None:
                logger.warning("%s: the config of %r is not a constant; its codecs are not known", shared, node.name)
                continue
            layouts.update(_multi_table_layouts(config))
    return layouts


def _node_of(by_name: dict[str, _Node], tensor: str) -> _Node | None:
    return by_name.get(tensor.lstrip("^").split(":")[0])


def _string_value(by_name: dict[str, _Node], tensor: str, depth: int = 0) -> str | None:
    """The string a graph tensor always holds: a ``Const``, or a ``StringJoin`` (attr ``separator``) of such; None
    for anything computed at run time."""
    node = _node_of(by_name, tensor)
    if node is None or depth > _MAX_STRING_DEPTH:
        return None
    if node.op == "Const":
        value = _const_string(node)
        return None if value is None else value.decode("utf-8", "replace")
    data_inputs = [name for name in node.inputs if not name.startswith("^")]
    if node.op in _PASS_THROUGH_OPS and data_inputs:
        return _string_value(by_name, data_inputs[0], depth + 1)
    if node.op == "StringJoin":
        parts = [_string_value(by_name, name, depth + 1) for name in data_inputs]
        if any(part is None for part in parts):
            return None
        separator = (node.attr_string("separator") or b"").decode("utf-8", "replace")
        return separator.join(part for part in parts if part is not None)
    return None


def _restores_partition(basename: str, partition: int) -> bool:
    name = basename.rstrip("/").rsplit("/", 1)[-1]
    resource = parse_table_resource_name(name)
    if name == f"{NATIVE_MULTI_DUMP_PREFIX}{partition}":
        return True
    return resource is not None and resource.partition == partition


def restore_basenames(saved_model: bytes, partition: int) -> list[str]:
    """The dump basenames (``<folder>/<table resource name>``) the graph's restore ops read for ``partition``, in
    graph order, where they are constants. Raises WireFormatError on malformed wire data."""
    nodes = list(_nodes(saved_model))
    by_name = {node.name: node for node in nodes}
    basenames: list[str] = []
    for node in nodes:
        if node.op not in _RESTORE_OPS or len(node.inputs) < 2:
            continue
        basename = _string_value(by_name, node.inputs[1])
        if basename is not None and _restores_partition(basename, partition) and basename not in basenames:
            basenames.append(basename)
    return basenames


def read_table_layouts(version_path: Path, partition: int) -> dict[str, ServingLayout | None] | None:
    """The table layouts of ``<version>/saved_model.pb`` (see ``graph_table_layouts``); None when the version has no
    saved_model.pb (our own exports) or its graph creates no hash table of ``partition`` that this reader finds (a
    warning): the dumps' rows are then served as they are. A malformed file is InvalidArgumentError naming it."""
    path = version_path / SAVED_MODEL_FILE
    if not path.is_file():
        return None
    try:
        layouts = graph_table_layouts(path.read_bytes(), partition)
    except (WireFormatError, GraphFormatError) as error:
        raise InvalidArgumentError(f"{str(path)!r}: not a readable SavedModel: {error}") from None
    if not layouts:
        logger.warning("%s creates no hash table of partition %d: serving the dumps' rows as they are", path, partition)
        return None
    return layouts


def read_restore_basenames(version_path: Path, partition: int) -> list[str]:
    """``restore_basenames`` of ``<version>/saved_model.pb``; [] without one. A malformed file is
    InvalidArgumentError naming it."""
    path = version_path / SAVED_MODEL_FILE
    if not path.is_file():
        return []
    try:
        return restore_basenames(path.read_bytes(), partition)
    except WireFormatError as error:
        raise InvalidArgumentError(f"{str(path)!r}: not a readable SavedModel: {error}") from None
