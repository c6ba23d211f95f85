"""A compiled reader of serialized ``parser.proto.Instance`` batches (the ``instances`` input).

Why not protobuf: parsing 16 Instances with upb takes ~5 us, but walking the parsed messages from Python — each
example's fid container, each Feature's name, fids and floats — then grouping the fids per feature with numpy took
~55 us per request, half of the entry's own CPU per Predict. Here one compiled pass over the wire bytes does
all of it, and only slices of its output arrays reach Python.

What is read (REFERENCE §4; field numbers from ``idl/matrix/proto``): ``Instance.fid`` (1, fixed64, packed or
not) — v1 fids, mapped to a feature by slot (``fid >> 54``) and converted to v2 unless the serving spec keeps
them (``instance_fid_v1``); ``Instance.feature`` (9) — ``Feature.name`` (1); for a sparse feature
``Feature.fid`` (2, fixed64: v2 fids) and then the fids of each ``Feature.fid_list`` entry (6, a sequence feature:
``Fixed64List.value`` = 1, fixed64), the order in which Monolith's Instance parsers take them; for a dense input
``Feature.float_value`` (3, float). Every other field, and a known field with a wire type it cannot have, is
skipped as protobuf skips unknown fields (groups included). The bytes are rejected where protobuf rejects them:
a truncated or over-long varint, a length past the end, field number 0, wire types 6 and 7, an end-group without
its start, a packed fixed-width run whose length is not a multiple of the width. One difference: a field this
reader never uses (``line_id``, ``label_tag``, ``Feature.int64_value`` …) is skipped by its length without
looking inside, so damage inside it goes unnoticed where protobuf would refuse the whole message (on mutated input
the tests see this in about 1 of 1000 refused messages).

Semantics match the protobuf-walking parser this replaced (tests compare the two on random and mutated input):
per feature, fids are grouped by example in example order; within one example the named ``Feature`` fids come
before the slot-mapped v1 fids, each in arrival order; a dense input given twice keeps its last values.
"""

from __future__ import annotations

from typing import Any

import numba  # type: ignore[import-untyped,unused-ignore]
import numpy as np

from monolith_serving.core.compiled import kernel
from monolith_serving.core.fid_bits import FID_V1_SLOT_SHIFT, FID_V2_HASH_MASK, FID_V2_SLOT_SHIFT

# Error codes in ``err[0]``; ``err[1]`` is the example, ``err[2:4]`` code-specific (see ``parse_batch``).
OK = 0
MALFORMED = 1  # err[2]: a ``MALFORMED_REASONS`` index
UNKNOWN_FEATURE = 2  # err[2], err[3]: start and length of the name in ``buf``
DENSE_DIM = 3  # err[2]: index into the name table, err[3]: the number of values given
UNKNOWN_SLOT = 4  # err[2]: the slot

MALFORMED_REASONS = (
    "truncated varint",
    "varint longer than 10 bytes",
    "length runs past the end of the message",
    "field number 0",
    "invalid wire type",
    "end-group tag without a start-group",
    "packed fixed-width field with a length that is not a multiple of its width",
    "groups nested too deeply",
    "truncated fixed-width field",
)
_TRUNCATED_VARINT, _LONG_VARINT, _LENGTH, _FIELD_ZERO, _WIRE_TYPE, _END_GROUP, _PACKED, _DEPTH, _FIXED = range(9)

_MAX_GROUP_DEPTH = 64


@numba.njit(inline="always")  # type: ignore[misc,unused-ignore]
def _varint(buf: Any, pos: int, end: int) -> tuple[Any, int, int]:
    """(value as int64 bits — a length past 2**63 reads as negative —, next position, error reason or -1)."""
    result = np.uint64(0)
    shift = np.uint64(0)
    for _ in range(10):
        if pos >= end:
            return 0, pos, _TRUNCATED_VARINT
        byte = buf[pos]
        pos += 1
        result |= np.uint64(byte & 0x7F) << shift
        if byte < 0x80:
            return np.int64(result), pos, -1
        shift += np.uint64(7)
    return 0, pos, _LONG_VARINT


@numba.njit(inline="always")  # type: ignore[misc,unused-ignore]
def _fixed64(buf: Any, pos: int) -> Any:
    value = np.uint64(0)
    for k in range(8):
        value |= np.uint64(buf[pos + k]) << np.uint64(8 * k)
    return np.int64(value)  # the same 64 bits: fids are int64 everywhere else


@numba.njit(inline="always")  # type: ignore[misc,unused-ignore]
def _tag(buf: Any, pos: int, end: int) -> tuple[int, int, int, int]:
    """(field number, wire type, next position, error reason or -1)."""
    tag, pos, error = _varint(buf, pos, end)
    if error < 0 and (tag >> 3) == 0:
        error = _FIELD_ZERO
    return tag >> 3, tag & 7, pos, error


@numba.njit(inline="always")  # type: ignore[misc,unused-ignore]
def _length(buf: Any, pos: int, end: int) -> tuple[int, int, int]:
    """A length-delimited field's (start, stop, error reason or -1), its length read at ``pos``."""
    length, pos, error = _varint(buf, pos, end)
    if error < 0 and (length < 0 or length > end - pos):
        error = _LENGTH
    return pos, pos + length, error


@numba.njit(inline="always")  # type: ignore[misc,unused-ignore]
def _run(buf: Any, pos: int, end: int, wire_type: int, width: int) -> tuple[int, int, int]:
    """(start, stop, error reason or -1) of a repeated fixed-width field's values at ``pos``: a packed run (wire
    type 2) or a single value."""
    if wire_type == 2:
        start, stop, error = _length(buf, pos, end)
        if error < 0 and (stop - start) % width != 0:
            error = _PACKED
        return start, stop, error
    if pos + width > end:
        return pos, pos, _FIXED
    return pos, pos + width, -1


@numba.njit  # type: ignore[misc,unused-ignore]
def _skip(buf: Any, pos: int, end: int, wire_type: int, field: int) -> tuple[int, int]:
    """Skips one field's value (a whole group for wire type 3); (next position, error reason or -1)."""
    if wire_type == 0:
        _, pos, error = _varint(buf, pos, end)
        return pos, error
    if wire_type == 1:
        return (pos + 8, -1) if pos + 8 <= end else (pos, _FIXED)
    if wire_type == 5:
        return (pos + 4, -1) if pos + 4 <= end else (pos, _FIXED)
    if wire_type == 2:
        _, stop, error = _length(buf, pos, end)
        return stop, error
    if wire_type == 3:
        # Groups nest; an explicit stack of the open groups' field numbers instead of recursion.
        stack = np.empty(_MAX_GROUP_DEPTH, dtype=np.int64)
        depth = 1
        stack[0] = field
        while depth > 0:
            inner_field, inner_type, pos, error = _tag(buf, pos, end)
            if error >= 0:
                return pos, error
            if inner_type == 4:
                if stack[depth - 1] != inner_field:
                    return pos, _END_GROUP
                depth -= 1
            elif inner_type == 3:
                if depth == _MAX_GROUP_DEPTH:
                    return pos, _DEPTH
                stack[depth] = inner_field
                depth += 1
            elif inner_type in (0, 1, 2, 5):
                pos, error = _skip(buf, pos, end, inner_type, inner_field)
                if error >= 0:
                    return pos, error
            else:
                return pos, _WIRE_TYPE
        return pos, -1
    if wire_type == 4:
        return pos, _END_GROUP
    return pos, _WIRE_TYPE


@numba.njit  # type: ignore[misc,unused-ignore]
def _feature_name(buf: Any, start: int, end: int, err: Any, example: int) -> tuple[int, int]:
    """(start, length) of the last ``name`` field of the Feature in ``buf[start:end]``; (-1, 0) without one.
    Sets ``err`` and returns (-2, 0) on malformed bytes."""
    name_start = -1
    name_length = 0
    pos = start
    while pos < end:
        field, wire_type, pos, error = _tag(buf, pos, end)
        if error >= 0:
            err[0], err[1], err[2] = MALFORMED, example, error
            return -2, 0
        if field == 1 and wire_type == 2:
            name_start, pos, error = _length(buf, pos, end)
            if error >= 0:
                err[0], err[1], err[2] = MALFORMED, example, error
                return -2, 0
            name_length = pos - name_start
        else:
            pos, error = _skip(buf, pos, end, wire_type, field)
            if error >= 0:
                err[0], err[1], err[2] = MALFORMED, example, error
                return -2, 0
    return name_start, name_length


@numba.njit  # type: ignore[misc,unused-ignore]
def _find_name(buf: Any, start: int, length: int, names: Any, name_starts: Any) -> int:
    """Index of ``buf[start:start+length]`` in the name table, or -1."""
    for k in range(name_starts.shape[0] - 1):
        a = name_starts[k]
        if name_starts[k + 1] - a != length:
            continue
        same = True
        for j in range(length):
            if names[a + j] != buf[start + j]:
                same = False
                break
        if same:
            return k
    return -1


@numba.njit  # type: ignore[misc,unused-ignore]
def _append_fids(
    buf: Any, pos: int, stop: int, row: int, target: int, out_fids: Any, out_features: Any, out_rows: Any, count: int
) -> int:
    """Appends the fixed64 fids of ``buf[pos:stop]`` (a checked run) to the outputs from ``count``; the new count."""
    while pos < stop:
        out_fids[count] = _fixed64(buf, pos)
        out_features[count] = target
        out_rows[count] = row
        count += 1
        pos += 8
    return count


@numba.njit  # type: ignore[misc,unused-ignore]
def _feature_values(
    buf: Any,
    start: int,
    end: int,
    want_fids: bool,
    row: int,
    target: int,
    out_fids: Any,
    out_features: Any,
    out_rows: Any,
    count: int,
    dense_row: Any,
    dim: int,
    scratch: Any,
    as_float: Any,
    err: Any,
    example: int,
) -> tuple[int, int]:
    """Reads a Feature's fids (sparse: appended to the outputs from ``count``) or float values (dense: written to
    ``dense_row[target:target+dim]``). (new count, values given — for fids: how many ``fid_list`` entries (6) the
    Feature holds, for ``_fid_list_values`` to read); sets ``err`` on malformed bytes (count -1).
    ``scratch`` (uint32[1]) and ``as_float`` (its float32 view) turn 4 little-endian bytes into a float; they
    are the caller's, allocated once per batch rather than once per Feature."""
    values = 0
    pos = start
    while pos < end:
        field, wire_type, pos, error = _tag(buf, pos, end)
        if error >= 0:
            err[0], err[1], err[2] = MALFORMED, example, error
            return -1, 0
        width = 8 if field == 2 else 4
        if (field == 2 or field == 3) and (wire_type == 2 or wire_type == (1 if field == 2 else 5)):
            pos, stop, error = _run(buf, pos, end, wire_type, width)
            if error >= 0:
                err[0], err[1], err[2] = MALFORMED, example, error
                return -1, 0
            if field == 2 and want_fids:
                count = _append_fids(buf, pos, stop, row, target, out_fids, out_features, out_rows, count)
            elif field == 3 and not want_fids:
                while pos < stop:
                    if values < dim:
                        scratch[0] = (
                            np.uint32(buf[pos])
                            | (np.uint32(buf[pos + 1]) << np.uint32(8))
                            | (np.uint32(buf[pos + 2]) << np.uint32(16))
                            | (np.uint32(buf[pos + 3]) << np.uint32(24))
                        )
                        dense_row[target + values] = as_float[0]
                    values += 1
                    pos += 4
            pos = stop  # a run's length is a multiple of its width (_run checks)
        else:
            if want_fids and field == 6 and wire_type == 2:
                values += 1
            pos, error = _skip(buf, pos, end, wire_type, field)
            if error >= 0:
                err[0], err[1], err[2] = MALFORMED, example, error
                return -1, 0
    return count, values


@numba.njit  # type: ignore[misc,unused-ignore]
def _fid_list_values(
    buf: Any,
    start: int,
    end: int,
    row: int,
    target: int,
    out_fids: Any,
    out_features: Any,
    out_rows: Any,
    count: int,
    err: Any,
    example: int,
) -> int:
    """Appends the fids of the Feature's ``fid_list`` entries (6, ``Fixed64List``: ``value`` = 1, fixed64) from
    ``count``, entry by entry; the new count, or -1 with ``err`` set on malformed bytes. A second walk over the
    Feature after ``_feature_values``: its ``fid`` values come first whatever the wire order, as Monolith reads
    them (``fid()`` then ``fid_list()``)."""
    pos = start
    while pos < end:
        field, wire_type, pos, error = _tag(buf, pos, end)
        if error >= 0:
            err[0], err[1], err[2] = MALFORMED, example, error
            return -1
        if field != 6 or wire_type != 2:
            pos, error = _skip(buf, pos, end, wire_type, field)
            if error >= 0:
                err[0], err[1], err[2] = MALFORMED, example, error
                return -1
            continue
        pos, list_end, error = _length(buf, pos, end)
        if error >= 0:
            err[0], err[1], err[2] = MALFORMED, example, error
            return -1
        while pos < list_end:
            inner_field, inner_type, pos, error = _tag(buf, pos, list_end)
            if error >= 0:
                err[0], err[1], err[2] = MALFORMED, example, error
                return -1
            if inner_field == 1 and (inner_type == 1 or inner_type == 2):
                pos, stop, error = _run(buf, pos, list_end, inner_type, 8)
                if error >= 0:
                    err[0], err[1], err[2] = MALFORMED, example, error
                    return -1
                count = _append_fids(buf, pos, stop, row, target, out_fids, out_features, out_rows, count)
                pos = stop
            else:
                pos, error = _skip(buf, pos, list_end, inner_type, inner_field)
                if error >= 0:
                    err[0], err[1], err[2] = MALFORMED, example, error
                    return -1
    return count


@numba.njit  # type: ignore[misc,unused-ignore]
def _group_by_feature(
    num_features: int,
    named_fids: Any,
    named_features: Any,
    named_rows: Any,
    named_count: int,
    v1_fids: Any,
    v1_features: Any,
    v1_rows: Any,
    v1_count: int,
    out_fids: Any,
    out_rows: Any,
    offsets: Any,
) -> None:
    """Per feature in order: its fids grouped by example, the named ones of an example before its v1 ones."""
    named_per = np.zeros(num_features, dtype=np.int64)
    v1_per = np.zeros(num_features, dtype=np.int64)
    for k in range(named_count):
        named_per[named_features[k]] += 1
    for k in range(v1_count):
        v1_per[v1_features[k]] += 1
    offsets[0] = 0
    for f in range(num_features):
        offsets[f + 1] = offsets[f] + named_per[f] + v1_per[f]
    # Both streams arrive in example order, so each feature's part of each stream is sorted by example; a merge
    # by example (ties: named first) gives the order. Positions of each feature's named and v1 entries first:
    named_next = offsets[:-1].copy()
    v1_next = offsets[:-1] + named_per
    staged_fids = np.empty(named_count + v1_count, dtype=np.int64)
    staged_rows = np.empty(named_count + v1_count, dtype=np.int64)
    for k in range(named_count):
        f = named_features[k]
        staged_fids[named_next[f]] = named_fids[k]
        staged_rows[named_next[f]] = named_rows[k]
        named_next[f] += 1
    for k in range(v1_count):
        f = v1_features[k]
        staged_fids[v1_next[f]] = v1_fids[k]
        staged_rows[v1_next[f]] = v1_rows[k]
        v1_next[f] += 1
    for f in range(num_features):
        a = offsets[f]
        b = a + named_per[f]
        c = offsets[f + 1]
        i, j, o = a, b, a
        while i < b and j < c:
            if staged_rows[j] < staged_rows[i]:
                out_fids[o], out_rows[o] = staged_fids[j], staged_rows[j]
                j += 1
            else:
                out_fids[o], out_rows[o] = staged_fids[i], staged_rows[i]
                i += 1
            o += 1
        while i < b:
            out_fids[o], out_rows[o] = staged_fids[i], staged_rows[i]
            i += 1
            o += 1
        while j < c:
            out_fids[o], out_rows[o] = staged_fids[j], staged_rows[j]
            j += 1
            o += 1


_U8 = numba.types.Array(numba.uint8, 1, "C", readonly=True)
_U8_RW = numba.types.Array(numba.uint8, 1, "C")
_I64 = numba.types.Array(numba.int64, 1, "C")
_F32_2D = numba.types.Array(numba.float32, 2, "C")


_PARSE_BATCH = numba.int64(
    _U8, _I64, _U8_RW, _I64, _I64, _I64, _I64, _I64, numba.boolean, numba.boolean, numba.int64,
    _I64, _I64, _I64, _F32_2D, _I64,
)  # fmt: skip


@kernel([_PARSE_BATCH])
def parse_batch(
    buf: Any,
    starts: Any,
    names: Any,
    name_starts: Any,
    name_kinds: Any,
    name_targets: Any,
    name_dims: Any,
    feature_of_v1_slot: Any,
    ignore_unknown: bool,
    convert_v1: bool,
    num_features: int,
    out_fids: Any,
    out_rows: Any,
    offsets: Any,
    dense: Any,
    err: Any,
) -> int:
    """Reads ``len(starts) - 1`` Instances, the i-th being ``buf[starts[i]:starts[i+1]]``.

    Name table: entry k is ``names[name_starts[k]:name_starts[k+1]]``, a sparse feature (``name_kinds[k] == 0``,
    ``name_targets[k]`` its feature index) or a dense input (1; ``name_targets[k]`` its first column in ``dense``,
    ``name_dims[k]`` its width). ``feature_of_v1_slot[slot]`` is the feature of a v1 slot, or -1. ``convert_v1``:
    v1 fids become v2 fids (``slot << 48 | low 48 bits``); false keeps them as they are.

    Outputs: feature f's fids and examples are ``out_fids/out_rows[offsets[f]:offsets[f+1]]`` (both sized at
    least ``len(buf) // 8`` by the caller: every fid takes 8 bytes of it); dense values go into ``dense`` (zeroed
    by the caller). Returns 0, or an error code with ``err`` = [code, example, detail, detail]."""
    capacity = out_fids.shape[0]
    named_fids = np.empty(capacity, dtype=np.int64)
    named_features = np.empty(capacity, dtype=np.int64)
    named_rows = np.empty(capacity, dtype=np.int64)
    v1_fids = np.empty(capacity, dtype=np.int64)
    v1_features = np.empty(capacity, dtype=np.int64)
    v1_rows = np.empty(capacity, dtype=np.int64)
    named_count = 0
    v1_count = 0
    slots = feature_of_v1_slot.shape[0]
    scratch = np.empty(1, dtype=np.uint32)
    as_float = scratch.view(np.float32)
    for example in range(starts.shape[0] - 1):
        pos = starts[example]
        end = starts[example + 1]
        while pos < end:
            field, wire_type, pos, error = _tag(buf, pos, end)
            if error >= 0:
                err[0], err[1], err[2] = MALFORMED, example, error
                return MALFORMED
            if field == 1 and (wire_type == 1 or wire_type == 2):
                pos, stop, error = _run(buf, pos, end, wire_type, 8)
                if error >= 0:
                    err[0], err[1], err[2] = MALFORMED, example, error
                    return MALFORMED
                while pos < stop:
                    v1 = np.uint64(_fixed64(buf, pos))
                    pos += 8
                    slot = int(v1 >> np.uint64(FID_V1_SLOT_SHIFT))
                    feature = feature_of_v1_slot[slot] if slot < slots else -1
                    if feature < 0:
                        if ignore_unknown:
                            continue
                        err[0], err[1], err[2] = UNKNOWN_SLOT, example, slot
                        return UNKNOWN_SLOT
                    if convert_v1:
                        v1 = (np.uint64(slot) << np.uint64(FID_V2_SLOT_SHIFT)) | (v1 & np.uint64(FID_V2_HASH_MASK))
                    v1_fids[v1_count] = np.int64(v1)
                    v1_features[v1_count] = feature
                    v1_rows[v1_count] = example
                    v1_count += 1
            elif field == 9 and wire_type == 2:
                pos, sub_end, error = _length(buf, pos, end)
                if error >= 0:
                    err[0], err[1], err[2] = MALFORMED, example, error
                    return MALFORMED
                name_start, name_length = _feature_name(buf, pos, sub_end, err, example)
                if name_start == -2:
                    return MALFORMED
                k = -1 if name_start < 0 else _find_name(buf, name_start, name_length, names, name_starts)
                if k < 0:
                    if not ignore_unknown:
                        err[0], err[1], err[2], err[3] = UNKNOWN_FEATURE, example, max(name_start, 0), name_length
                        return UNKNOWN_FEATURE
                    # Still walk it (reading nothing): a malformed Feature fails the request whatever its name.
                    count, _ = _feature_values(
                        buf, pos, sub_end, False, example, 0, named_fids, named_features, named_rows, named_count,
                        dense[example], 0, scratch, as_float, err, example,
                    )  # fmt: skip
                    if count < 0:
                        return MALFORMED
                elif name_kinds[k] == 0:
                    named_count, fid_lists = _feature_values(
                        buf, pos, sub_end, True, example, name_targets[k], named_fids, named_features, named_rows,
                        named_count, dense[example], 0, scratch, as_float, err, example,
                    )  # fmt: skip
                    if named_count < 0:
                        return MALFORMED
                    if fid_lists > 0:  # a second walk only for a sequence feature
                        named_count = _fid_list_values(
                            buf, pos, sub_end, example, name_targets[k], named_fids, named_features, named_rows,
                            named_count, err, example,
                        )  # fmt: skip
                        if named_count < 0:
                            return MALFORMED
                else:
                    dim = name_dims[k]
                    count, given = _feature_values(
                        buf, pos, sub_end, False, example, name_targets[k], named_fids, named_features, named_rows,
                        named_count, dense[example], dim, scratch, as_float, err, example,
                    )  # fmt: skip
                    if count < 0:
                        return MALFORMED
                    if given != dim:
                        err[0], err[1], err[2], err[3] = DENSE_DIM, example, k, given
                        return DENSE_DIM
                pos = sub_end
            else:
                pos, error = _skip(buf, pos, end, wire_type, field)
                if error >= 0:
                    err[0], err[1], err[2] = MALFORMED, example, error
                    return MALFORMED
    _group_by_feature(
        num_features, named_fids, named_features, named_rows, named_count,
        v1_fids, v1_features, v1_rows, v1_count, out_fids, out_rows, offsets,
    )  # fmt: skip
    return OK
