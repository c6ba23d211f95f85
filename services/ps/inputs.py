"""Decoding and validating Predict inputs of the PS signatures (no gRPC here, only TensorProtos)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from monolith_serving.core.errors import InvalidArgumentError, ResourceExhaustedError
from monolith_serving.core.sharding import shard_of
from monolith_serving.core.tensor_codec import dtype_name, from_tensor_proto, tensor_shape
from monolith_serving.proto_gen.tensorflow.core.framework import tensor_pb2, types_pb2
from monolith_serving.ps.fid_index import Int64Array

TensorMap = Mapping[str, tensor_pb2.TensorProto]


@dataclass(frozen=True)
class ShardCheck:
    """Fids of shard ``partition`` satisfy ``fid mod num_ps == partition`` (floor modulo); num_ps 0: no check."""

    num_ps: int
    partition: int

    def check(self, fids: Int64Array, input_name: str) -> None:
        if self.num_ps <= 1 or not len(fids):
            return
        misplaced = shard_of(fids, self.num_ps) != self.partition
        if misplaced.any():  # the details are only worked out for the error message
            wrong = np.flatnonzero(misplaced)
            fid = int(fids[wrong[0]])
            raise InvalidArgumentError(
                f"input {input_name!r}: {len(wrong)} fid(s) do not belong to shard {self.partition} of "
                f"{self.num_ps} (first: {fid}, {fid} mod {self.num_ps} = {fid % self.num_ps})"
            )


def element_count(proto: tensor_pb2.TensorProto, name: str) -> int:
    # math.prod on Python ints: exact (no int64 overflow) and ~10x cheaper than np.prod on a tiny tuple.
    return math.prod(tensor_shape(proto, name))


def check_request_size(inputs: TensorMap, limit: int, *, what: str) -> int:
    """Total elements of the inputs; RESOURCE_EXHAUSTED above ``limit`` (checked before decoding anything)."""
    total = sum(element_count(proto, name) for name, proto in inputs.items())
    if total > limit:
        raise ResourceExhaustedError(f"request has {total} {what}, more than the limit of {limit} per request")
    return total


def decode_typed(proto: tensor_pb2.TensorProto, name: str, datatype: int, rank: int | None) -> npt.NDArray[Any]:
    if proto.dtype != datatype:
        raise InvalidArgumentError(f"input {name!r}: dtype {dtype_name(proto.dtype)}, expected {dtype_name(datatype)}")
    array = from_tensor_proto(proto, name)
    if rank is not None and array.ndim != rank:
        raise InvalidArgumentError(f"input {name!r}: shape {list(array.shape)}, expected rank {rank}")
    return array


def decode_fids(proto: tensor_pb2.TensorProto, name: str) -> Int64Array:
    # The common encoding (what the entry and TF clients send): a 1-d int64 tensor_content, read in place.
    # Anything else, valid or not, takes the general decoder and its checks and error messages.
    content = proto.tensor_content
    if proto.dtype == types_pb2.DT_INT64 and content and not proto.tensor_shape.unknown_rank:
        dims = proto.tensor_shape.dim
        if len(dims) == 1 and dims[0].size * 8 == len(content):
            return np.frombuffer(content, dtype="<i8")
    fids: Int64Array = decode_typed(proto, name, types_pb2.DT_INT64, 1)
    return fids


def decode_ragged_ids(inputs: TensorMap, num_tables: int, shard: ShardCheck) -> tuple[Int64Array, Int64Array]:
    """``id`` int64[total] and ``id_split`` int64[tables + 1], the prefix offsets of each table's ids in ``id``
    (Monolith's ragged id of a multi-hash table: ``raw_assign`` and ``raw_lookup``); the fids are shard-checked."""
    fids = decode_fids(inputs["id"], "id")
    split: Int64Array = decode_typed(inputs["id_split"], "id_split", types_pb2.DT_INT64, 1)
    if len(split) != num_tables + 1:
        raise InvalidArgumentError(
            f"input 'id_split': {len(split)} offsets, the model has {num_tables} tables so {num_tables + 1} are needed"
        )
    if split[0] != 0 or split[-1] != len(fids) or np.any(np.diff(split) < 0):
        raise InvalidArgumentError(
            f"input 'id_split': offsets must rise from 0 to len(id) = {len(fids)}, got {split.tolist()[:8]}"
        )
    shard.check(fids, "id")
    return fids, split


MAX_TABLE_DIM = 4096
"""The widest row a table whose dim comes from its first update may take (see ``decode_values``)."""


def decode_values(proto: tensor_pb2.TensorProto, name: str, rows: int, dim: int) -> npt.NDArray[np.float32]:
    """``[rows, dim]`` float32 from a ``[rows, dim]`` or flat ``[rows * dim]`` tensor.

    ``dim`` 0: the table holds no rows on this shard yet (an export may leave a partition empty), so its dim is
    not known; it is read off this tensor (``[rows, d]``, or ``[rows * d]`` with rows > 0), at most
    ``MAX_TABLE_DIM``. The shape is checked before anything is decoded: a single typed value would otherwise
    be spread over whatever element count the tensor claims.
    """
    shape = tensor_shape(proto, name)
    if dim == 0:
        if rows == 0 and math.prod(shape) == 0:
            return np.empty((0, 0), dtype=np.float32)  # nothing to write, nothing to learn the dim from
        dim = _dim_of_first_update(shape, rows, name)
    if len(shape) == 1:
        if dim == 0 or shape[0] % dim:
            raise InvalidArgumentError(f"input {name!r}: {shape[0]} values is not a multiple of the table dim {dim}")
        fits = shape[0] // dim == rows
    else:
        fits = shape == (rows, dim)
    if not fits:
        raise InvalidArgumentError(f"input {name!r}: shape {list(shape)}, expected [{rows}, {dim}]")
    values: npt.NDArray[np.float32] = decode_typed(proto, name, types_pb2.DT_FLOAT, None)
    return values.reshape(rows, dim)


def _dim_of_first_update(shape: tuple[int, ...], rows: int, name: str) -> int:
    dim = shape[1] if len(shape) == 2 else (shape[0] // rows if len(shape) == 1 and rows else 0)
    if not 1 <= dim <= MAX_TABLE_DIM:
        raise InvalidArgumentError(
            f"input {name!r}: shape {list(shape)} gives no row width in 1..{MAX_TABLE_DIM} for {rows} ids (the "
            "table has no rows on this shard yet, so its dim is taken from its first update)"
        )
    return dim
