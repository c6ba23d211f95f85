"""Request protos -> per-feature fid columns and the dense-input matrix (REFERENCE §4).

Three input kinds, one result (``ParsedBatch``):

- ``instances``: serialized ``parser.proto.Instance``. ``fid`` holds v1 fids (slot = fid >> 54); they are
  converted to v2 fids (``slot << 48 | (fid & (2**48 - 1))``) before lookup, because tables are keyed by v2
  fids — unless the spec's ``instance_fid_v1`` is ``keep`` (tables keyed by v1 fids, as Monolith's Instance
  parser leaves them for a model without fid-v2 features): then they are looked up as they are. ``feature``
  lists are matched by name: ``fid`` and then the ``fid_list`` entries' fids (looked up as given) for sparse
  features, ``float_value`` for dense inputs.
- ``example_batch``: one serialized ``monolith.io.proto.ExampleBatch``. Lists are matched by name; an
  INDIVIDUAL list has one Feature per example, a SHARED list one Feature every example uses. Sparse
  features take ``fid_v1_list`` (always converted, as Monolith's ExampleBatch parser does) or
  ``fid_v2_list``; dense inputs take float/double/int64 lists or single values. Lists whose name starts
  with ``__`` (``__LABEL__``, ``__LINE_ID__`` …) carry training metadata and are skipped.
- ``examples``: serialized ``tf.Example``. ``int64_list`` holds the fids of a sparse feature (looked up as
  given: v2 fids, or v1 fids for a spec that keeps them); a dense input takes a ``float_list`` (or
  ``int64_list``).

A sparse feature missing from an example pools to zeros; a missing dense input is zeros. A name the
serving spec does not know is INVALID_ARGUMENT unless the spec sets ``ignore_unknown_features``.
A request whose fids, all features together and SHARED lists counted once per example, exceed
``max_fids_per_request`` is INVALID_ARGUMENT too. Every error message names the input, the example index
and the feature.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.fid_bits import FID_V1_SLOT_SHIFT, FID_V1_SLOTS, FID_V2_HASH_MASK, FID_V2_SLOT_SHIFT
from monolith_serving.core.serving_spec import InstanceFidV1, ServingSpec
from monolith_serving.entry import instance_wire
from monolith_serving.proto_gen.idl.matrix.proto import example_pb2 as monolith_example_pb2
from monolith_serving.proto_gen.tensorflow.core.example import example_pb2 as tf_example_pb2
from monolith_serving.ps.config import DEFAULT_MAX_FIDS_PER_REQUEST as PS_DEFAULT_MAX_FIDS_PER_REQUEST

# ExampleBatch lists with this prefix carry labels, line ids and the like, never model features.
RESERVED_PREFIX = "__"

# The most fids one request may carry by default, counting a SHARED list once per example (that is what is
# deduped, looked up and pooled): the PS's own default limit (2**21 = the default max batch size 1024 x 2048 fids
# per example), so one request never grows a lookup past what a PS shard accepts. The message size does not bound
# this count: a 400 KB ExampleBatch with 50k SHARED fids and batch_size 1024 expands to 51M fids.
DEFAULT_MAX_FIDS_PER_REQUEST = PS_DEFAULT_MAX_FIDS_PER_REQUEST

Int64Array = npt.NDArray[np.int64]
Float32Array = npt.NDArray[np.float32]


_V1_SHIFT = np.uint64(FID_V1_SLOT_SHIFT)
_V2_SHIFT = np.uint64(FID_V2_SLOT_SHIFT)
_V2_MASK = np.uint64(FID_V2_HASH_MASK)


def fid_v1_to_v2(fids: npt.NDArray[np.uint64]) -> Int64Array:
    """``slot << 48 | (fid & (2**48 - 1))`` with slot = fid >> 54 (v1 slots are < 1024, so this fits)."""
    v1 = fids.astype(np.uint64, copy=False)
    v2 = ((v1 >> _V1_SHIFT) << _V2_SHIFT) | (v1 & _V2_MASK)
    return v2.view(np.int64)


def _u64_as_i64(values: Iterable[int]) -> Int64Array:
    return _uint64s(values).view(np.int64)


def _uint64s(values: Iterable[int]) -> npt.NDArray[np.uint64]:
    # list() then np.array: about twice as fast as np.fromiter over a chain of protobuf containers.
    return np.array(list(values), dtype=np.uint64)


class SparseColumn(NamedTuple):
    """The fids (table keys: v2, or v1 kept by the spec) of one feature for the whole batch, grouped by example in
    request order.

    ``rows[k]`` is the example index of ``fids[k]``; ``rows`` is non-decreasing.
    """

    fids: Int64Array
    rows: Int64Array


@dataclass(frozen=True)
class ParsedBatch:
    batch_size: int
    sparse: tuple[SparseColumn, ...]  # one per ServingSpec.features, same order
    dense: Float32Array  # [batch_size, sum of dense input dims]


_EMPTY = np.zeros(0, dtype=np.int64)


def too_many_fids(where: str, count: int, total: int, limit: int, detail: str = "") -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{where}: {count} fids{detail} bring the request to {total} fids, more than the limit of {limit} "
        "per request (--max_fids_per_request)"
    )


class _Collector:
    """Accumulates fid chunks per feature; builds sorted columns once at the end.

    Callers ``reserve`` a chunk's fid count before building it, so an oversized request is refused before
    its fids are allocated."""

    def __init__(self, num_features: int, batch_size: int, dense_width: int, max_fids: int) -> None:
        self.fids: list[list[Int64Array]] = [[] for _ in range(num_features)]
        self.rows: list[list[Int64Array]] = [[] for _ in range(num_features)]
        self.dense = np.zeros((batch_size, dense_width), dtype=np.float32)
        self.batch_size = batch_size
        self.max_fids = max_fids
        self.total_fids = 0

    def reserve(self, count: int, where: str, detail: str = "") -> None:
        """Counts ``count`` more fids towards the request's limit; InvalidArgumentError naming ``where`` above it."""
        total = self.total_fids + count
        if total > self.max_fids:
            raise too_many_fids(where, count, total, self.max_fids, detail)
        self.total_fids = total

    def add(self, feature: int, fids: Int64Array, rows: Int64Array) -> None:
        if len(fids):
            self.fids[feature].append(fids)
            self.rows[feature].append(rows)

    def add_row(self, feature: int, fids: Int64Array, row: int) -> None:
        if len(fids):
            self.fids[feature].append(fids)
            self.rows[feature].append(np.full(len(fids), row, dtype=np.int64))

    def build(self) -> ParsedBatch:
        columns = []
        for fid_chunks, row_chunks in zip(self.fids, self.rows, strict=True):
            if not fid_chunks:
                columns.append(SparseColumn(_EMPTY, _EMPTY))
                continue
            if len(fid_chunks) == 1:
                columns.append(SparseColumn(fid_chunks[0], row_chunks[0]))
                continue
            fids = np.concatenate(fid_chunks)
            rows = np.concatenate(row_chunks)
            if np.any(rows[1:] < rows[:-1]):
                # Chunks from different sources (slots and named lists) interleave; keep each example's
                # fids in arrival order (firstn pooling depends on it).
                order = np.argsort(rows, kind="stable")
                fids, rows = fids[order], rows[order]
            columns.append(SparseColumn(fids, rows))
        return ParsedBatch(self.batch_size, tuple(columns), self.dense)


@dataclass(frozen=True)
class _NameTable:
    """The names an Instance's ``Feature`` may carry, laid out for ``instance_wire``: sparse features first (a
    name that is both a sparse feature and a dense input is the sparse feature, as everywhere in this parser)."""

    names: npt.NDArray[np.uint8]  # UTF-8 of every name, concatenated
    starts: Int64Array  # name k is names[starts[k]:starts[k+1]]
    kinds: Int64Array  # 0 sparse feature, 1 dense input
    targets: Int64Array  # the feature index, or the dense input's first column
    dims: Int64Array  # a dense input's width (0 for sparse features)
    labels: tuple[str, ...]

    @staticmethod
    def of(sparse: dict[str, int], dense: dict[str, tuple[int, int]]) -> _NameTable:
        entries = [(name, 0, index, 0) for name, index in sparse.items()]
        entries += [(name, 1, offset, dim) for name, (offset, dim) in dense.items() if name not in sparse]
        encoded = [name.encode() for name, *_ in entries]
        starts = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=starts[1:])
        return _NameTable(
            names=np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
            starts=starts,
            kinds=np.array([e[1] for e in entries], dtype=np.int64),
            targets=np.array([e[2] for e in entries], dtype=np.int64),
            dims=np.array([e[3] for e in entries], dtype=np.int64),
            labels=tuple(e[0] for e in entries),
        )


class RequestParser:
    """Parses the three input kinds for one serving spec. Stateless after construction; thread-safe."""

    def __init__(
        self,
        spec: ServingSpec,
        max_batch_size: int | None = None,
        max_fids_per_request: int = DEFAULT_MAX_FIDS_PER_REQUEST,
    ) -> None:
        self.spec = spec
        self.max_batch_size = max_batch_size if max_batch_size is not None else spec.max_batch_size
        self.max_fids_per_request = max_fids_per_request
        self._sparse_by_name = {f.name: i for i, f in enumerate(spec.features)}
        self._sparse_by_slot: dict[int, int] = {}
        for i, feature in enumerate(spec.features):
            # The first feature of a slot wins; a spec mapping one slot twice is ambiguous for v1 fids.
            self._sparse_by_slot.setdefault(feature.slot, i)
        # v1 slot (10 bits) -> feature index, -1 when the spec has no such slot: one gather per batch.
        self._feature_of_v1_slot = np.full(FID_V1_SLOTS, -1, dtype=np.int64)
        for slot, i in self._sparse_by_slot.items():
            if 0 <= slot < len(self._feature_of_v1_slot):
                self._feature_of_v1_slot[slot] = i
        self._dense_by_name: dict[str, tuple[int, int]] = {}
        offset = 0
        for dense_input in spec.dense_inputs:
            self._dense_by_name[dense_input.name] = (offset, dense_input.dim)
            offset += dense_input.dim
        self.dense_width = offset
        self._instance_names = _NameTable.of(self._sparse_by_name, self._dense_by_name)

    # -- shared helpers -------------------------------------------------------------------------------

    def _check_batch(self, size: int, what: str) -> None:
        if size < 1:
            raise InvalidArgumentError(f"{what}: batch is empty")
        if size > self.max_batch_size:
            raise InvalidArgumentError(f"{what}: batch size {size} exceeds the maximum of {self.max_batch_size}")

    def _collector(self, batch_size: int) -> _Collector:
        return _Collector(len(self.spec.features), batch_size, self.dense_width, self.max_fids_per_request)

    def _unknown(self, name: str, where: str) -> None:
        if not self.spec.ignore_unknown_features:
            raise InvalidArgumentError(f"{where}: unknown feature {name!r} (not in the serving spec)")

    def _dense_values(self, name: str, values: Sequence[float], where: str) -> tuple[int, Float32Array]:
        offset = self._dense_offset(name, values, where)
        return offset, np.asarray(values, dtype=np.float32)

    def _dense_offset(self, name: str, values: Sequence[float], where: str) -> int:
        """The column offset of dense input ``name`` after checking it got exactly its dim values."""
        offset, dim = self._dense_by_name[name]
        if len(values) != dim:
            raise InvalidArgumentError(f"{where}: dense input {name!r} needs {dim} values, got {len(values)}")
        return offset

    # -- instances ------------------------------------------------------------------------------------

    def parse_instances(self, blobs: Sequence[bytes]) -> ParsedBatch:
        """One compiled pass over the wire bytes (``instance_wire``); the protobuf classes are not used."""
        self._check_batch(len(blobs), "input 'instances'")
        batch = len(blobs)
        try:
            joined = b"".join(blobs)
        except TypeError as error:
            raise InvalidArgumentError(f"input 'instances' must hold serialized Instances (bytes): {error}") from error
        buf = np.frombuffer(joined, dtype=np.uint8)
        # Where each blob starts in ``joined`` (and where the last ends); 3x cheaper than np.cumsum of a list at 16.
        starts = np.fromiter(itertools.accumulate(map(len, blobs), initial=0), dtype=np.int64, count=batch + 1)
        capacity = len(joined) // 8 + 1  # every fid takes 8 bytes of the input
        fids = np.empty(capacity, dtype=np.int64)
        rows = np.empty(capacity, dtype=np.int64)
        offsets = np.empty(len(self.spec.features) + 1, dtype=np.int64)
        dense = np.zeros((batch, self.dense_width), dtype=np.float32)
        err = np.zeros(4, dtype=np.int64)
        names = self._instance_names
        code = instance_wire.parse_batch(
            buf, starts, names.names, names.starts, names.kinds, names.targets, names.dims,
            self._feature_of_v1_slot, self.spec.ignore_unknown_features,
            self.spec.instance_fid_v1 is InstanceFidV1.TO_V2, len(self.spec.features),
            fids, rows, offsets, dense, err,
        )  # fmt: skip
        if code != instance_wire.OK:
            raise self._instance_error(code, err, buf)
        bounds = offsets.tolist()
        self._check_instance_fids(bounds)
        columns = tuple(
            SparseColumn(fids[a:b], rows[a:b]) if b > a else SparseColumn(_EMPTY, _EMPTY)
            for a, b in itertools.pairwise(bounds)
        )
        return ParsedBatch(batch, columns, dense)

    def _check_instance_fids(self, bounds: list[int]) -> None:
        """The limit on the parsed columns (``bounds``: each feature's start, then the end): the compiled pass
        cannot stop early, but its output is bounded by the message size, so checking afterwards is enough."""
        total = bounds[-1] - bounds[0]
        if total <= self.max_fids_per_request:
            return
        counts = [b - a for a, b in itertools.pairwise(bounds)]
        largest = max(range(len(counts)), key=counts.__getitem__)
        name = self.spec.features[largest].name
        raise too_many_fids(f"input 'instances' feature {name!r}", counts[largest], total, self.max_fids_per_request)

    def _instance_error(self, code: int, err: Int64Array, buf: npt.NDArray[np.uint8]) -> InvalidArgumentError:
        example, detail, extra = int(err[1]), int(err[2]), int(err[3])
        where = f"input 'instances'[{example}]"
        if code == instance_wire.MALFORMED:
            reason = instance_wire.MALFORMED_REASONS[detail]
            return InvalidArgumentError(f"{where} is not a serialized parser.proto.Instance: {reason}")
        if code == instance_wire.UNKNOWN_SLOT:
            return InvalidArgumentError(
                f"input 'instances': fids of unknown slot(s) {detail} (not in the serving spec)"
            )
        if code == instance_wire.UNKNOWN_FEATURE:
            name = bytes(buf[detail : detail + extra]).decode("utf-8", errors="replace")
            return InvalidArgumentError(f"{where} feature {name!r}: unknown feature {name!r} (not in the serving spec)")
        name = self._instance_names.labels[detail]
        dim = int(self._instance_names.dims[detail])
        return InvalidArgumentError(f"{where} feature {name!r}: dense input {name!r} needs {dim} values, got {extra}")

    # -- example_batch --------------------------------------------------------------------------------

    def parse_example_batch(self, blob: bytes) -> ParsedBatch:
        try:
            example_batch = monolith_example_pb2.ExampleBatch.FromString(blob)
        except (DecodeError, TypeError) as error:
            raise InvalidArgumentError(
                f"input 'example_batch' is not a serialized monolith.io.proto.ExampleBatch: {error}"
            ) from error
        lists = [nfl for nfl in example_batch.named_feature_list if not nfl.name.startswith(RESERVED_PREFIX)]
        batch = example_batch.batch_size
        if batch <= 0:
            individual = [len(nfl.feature) for nfl in lists if nfl.type == monolith_example_pb2.INDIVIDUAL]
            batch = individual[0] if individual else 0
        self._check_batch(batch, "input 'example_batch'")
        out = self._collector(batch)
        for nfl in lists:
            where = f"input 'example_batch' list {nfl.name!r}"
            shared = nfl.type == monolith_example_pb2.SHARED
            if shared and len(nfl.feature) != 1:
                raise InvalidArgumentError(f"{where}: a SHARED list needs exactly 1 feature, got {len(nfl.feature)}")
            if not shared and len(nfl.feature) != batch:
                raise InvalidArgumentError(
                    f"{where}: an INDIVIDUAL list needs batch_size={batch} features, got {len(nfl.feature)}"
                )
            if nfl.name in self._sparse_by_name:
                self._example_batch_sparse(out, self._sparse_by_name[nfl.name], nfl, shared, where)
            elif nfl.name in self._dense_by_name:
                self._example_batch_dense(out, nfl, shared, where)
            else:
                self._unknown(nfl.name, where)
        return out.build()

    @staticmethod
    def _fids_of(feature: monolith_example_pb2.Feature, where: str) -> Int64Array:
        kind = feature.WhichOneof("type")
        if kind is None:
            return _EMPTY
        if kind == "fid_v2_list":
            return _u64_as_i64(feature.fid_v2_list.value)
        if kind == "fid_v1_list":
            values = feature.fid_v1_list.value
            return fid_v1_to_v2(_uint64s(values))
        raise InvalidArgumentError(f"{where}: a sparse feature needs fid_v1_list or fid_v2_list, got {kind}")

    def _example_batch_sparse(
        self,
        out: _Collector,
        feature_index: int,
        nfl: monolith_example_pb2.NamedFeatureList,
        shared: bool,
        where: str,
    ) -> None:
        if shared:
            fids = self._fids_of(nfl.feature[0], where)
            # Counted as expanded, before np.tile allocates len(fids) * batch_size of them.
            out.reserve(len(fids) * out.batch_size, where, f" ({len(fids)} shared by {out.batch_size} examples)")
            out.add(
                feature_index,
                np.tile(fids, out.batch_size),
                np.repeat(np.arange(out.batch_size, dtype=np.int64), len(fids)),
            )
            return
        chunks = [self._fids_of(feature, f"{where} example {j}") for j, feature in enumerate(nfl.feature)]
        lengths = [len(c) for c in chunks]
        out.reserve(sum(lengths), where)
        if sum(lengths):
            out.add(
                feature_index,
                np.concatenate(chunks),
                np.repeat(np.arange(out.batch_size, dtype=np.int64), lengths),
            )

    @staticmethod
    def _floats_of(feature: monolith_example_pb2.Feature, where: str) -> list[float]:
        kind = feature.WhichOneof("type")
        if kind is None:
            return []
        if kind in ("float_list", "double_list", "int64_list"):
            return [float(v) for v in getattr(feature, kind).value]
        if kind in ("float_value", "double_value", "int64_value"):
            return [float(getattr(feature, kind))]
        raise InvalidArgumentError(f"{where}: a dense input needs float/double/int64 values, got {kind}")

    def _example_batch_dense(
        self, out: _Collector, nfl: monolith_example_pb2.NamedFeatureList, shared: bool, where: str
    ) -> None:
        for j, feature in enumerate(nfl.feature):
            at = f"{where} example {j}"
            values = self._floats_of(feature, at)
            if not values:
                continue
            offset, array = self._dense_values(nfl.name, values, at)
            if shared:
                out.dense[:, offset : offset + len(array)] = array
            else:
                out.dense[j, offset : offset + len(array)] = array

    # -- tf.Example -----------------------------------------------------------------------------------

    def parse_examples(self, blobs: Sequence[bytes]) -> ParsedBatch:
        self._check_batch(len(blobs), "input 'examples'")
        out = self._collector(len(blobs))
        for i, blob in enumerate(blobs):
            try:
                example = tf_example_pb2.Example.FromString(blob)
            except (DecodeError, TypeError) as error:
                raise InvalidArgumentError(
                    f"input 'examples'[{i}] is not a serialized tensorflow.Example: {error}"
                ) from error
            for name, feature in example.features.feature.items():
                where = f"input 'examples'[{i}] feature {name!r}"
                kind = feature.WhichOneof("kind")
                if name in self._sparse_by_name:
                    if kind is None:
                        continue
                    if kind != "int64_list":
                        raise InvalidArgumentError(f"{where}: a sparse feature needs int64_list fids, got {kind}")
                    values = feature.int64_list.value
                    out.reserve(len(values), where)
                    out.add_row(self._sparse_by_name[name], np.fromiter(values, dtype=np.int64, count=len(values)), i)
                elif name in self._dense_by_name:
                    if kind is None:
                        continue
                    if kind not in ("float_list", "int64_list"):
                        raise InvalidArgumentError(f"{where}: a dense input needs float_list values, got {kind}")
                    offset, array = self._dense_values(name, getattr(feature, kind).value, where)
                    out.dense[i, offset : offset + len(array)] = array
                else:
                    self._unknown(name, where)
        return out.build()
