"""The value compression a Monolith serving PS stores embeddings in, reproduced so lookups answer the same floats.

A Monolith PS serving an export keeps every row in the *serving* form its table config names per segment
(``EntryConfig.Segment.comp_config``, a ``FloatCompressorConfig``): it encodes each restored or assigned row and
decodes it on lookup (hash_table/entry_accessor.cc ``ServingEntryAccessor``, compressor/float_compressor.cc). So
what it answers is ``decode(encode(row))``, not the dump's row. Monolith's default for embedding slices is fp16
(feature.py ``FeatureSlotConfig.default_vec_compressor``), for the bias fp32. The codecs, per segment of the row:

- ``fp32``: unchanged;
- ``fp16``: rounded to IEEE half precision (round to nearest, ties to even; beyond the half range: +-inf);
- ``fixed_r8`` (``r``, default 1.0): an int8 step count of ``step = r / 128``: ``trunc((x +- step / 2) / step)``
  clamped to ``[-128, 127]`` (NaN -> 0), answered as ``count * step``;
- ``one_bit`` (``amplitude`` default 0.1, ``init_scale`` default 1.0): ``+amplitude`` where
  ``amplitude * tanh(init_scale * x) > 0``, else ``-amplitude`` (a serving table never trains, so its scale stays
  ``init_scale``).

All arithmetic is float32, as in Monolith's kernels. The one difference: a value whose step count overflows int32
(e.g. +-inf under ``fixed_r8``) is undefined behaviour in Monolith's C++; here it clamps like any large value.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float32]


class Codec(str, enum.Enum):
    """A FloatCompressorConfig oneof member; declared in field-number order (1..4)."""

    FP32 = "fp32"
    FP16 = "fp16"
    FIXED_R8 = "fixed_r8"
    ONE_BIT = "one_bit"


FP32, FP16, FIXED_R8, ONE_BIT = Codec.FP32, Codec.FP16, Codec.FIXED_R8, Codec.ONE_BIT
CODECS = tuple(Codec)

_R8_NEGATIVE_STEPS = 128
_R8_POSITIVE_STEPS = 127


@dataclass(frozen=True)
class Segment:
    """One segment of a table's row: ``dim`` columns stored with ``codec`` and its parameters."""

    dim: int
    codec: Codec = FP32
    r: float = 1.0
    amplitude: float = 0.1
    init_scale: float = 1.0

    def apply(self, values: FloatMatrix) -> None:
        """Replaces ``values`` (float32 ``[n, dim]``, writable, may be a column slice) by what Monolith's serving
        table answers for them."""
        if self.codec == FP16:
            with np.errstate(over="ignore"):  # beyond the half range is +-inf, as in Monolith
                values[...] = values.astype(np.float16)
        elif self.codec == FIXED_R8:
            values[...] = _fixed_r8(values, np.float32(self.r))
        elif self.codec == ONE_BIT:
            amplitude = np.float32(self.amplitude)
            forward = amplitude * np.tanh(np.float32(self.init_scale) * values)
            values[...] = np.where(forward > 0, amplitude, -amplitude)


def _fixed_r8(values: FloatMatrix, r: np.float32) -> FloatMatrix:
    step = r / np.float32(_R8_NEGATIVE_STEPS)
    half_step = step / np.float32(2)
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = np.where(values >= 0, values + half_step, values - half_step)
        counts = np.trunc(shifted / step)
    counts = np.clip(np.nan_to_num(counts, nan=0.0), -_R8_NEGATIVE_STEPS, _R8_POSITIVE_STEPS)
    result: FloatMatrix = counts.astype(np.float32) * step
    return result


@dataclass(frozen=True)
class ServingLayout:
    """How a Monolith serving PS holds one table: its segments in row order. ``dim`` is their sum, the table's
    width whether or not the dumps hold any row of it."""

    segments: tuple[Segment, ...]

    # Cached: read for every upserted batch of rows on the sync path; the segments never change.
    @functools.cached_property
    def dim(self) -> int:
        return sum(s.dim for s in self.segments)

    @functools.cached_property
    def lossless(self) -> bool:
        return all(s.codec == FP32 for s in self.segments)

    def apply(self, values: FloatMatrix) -> None:
        """Turns the rows ``values`` (float32 ``[n, dim]``, writable) in place into what Monolith answers for them."""
        if self.lossless or not len(values):
            return
        start = 0
        for segment in self.segments:
            segment.apply(values[:, start : start + segment.dim])
            start += segment.dim

    def applied(self, values: FloatMatrix) -> FloatMatrix:
        """``apply`` on a copy (for rows that are not ours to change, e.g. views of a request's bytes)."""
        if self.lossless or not len(values):
            return values
        copy: FloatMatrix = np.array(values, dtype=np.float32, order="C")
        self.apply(copy)
        return copy
