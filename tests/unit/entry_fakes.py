"""Fakes of the entry's ``EmbeddingLookup`` for tests that need no PS."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from monolith_serving.entry.ps_client import EmbeddingLookup, LookupResult


class NoLookup(EmbeddingLookup):
    """For tests in which nothing is looked up: a lookup fails the test."""

    async def lookup(
        self,
        version: int,
        fids: Mapping[str, npt.NDArray[np.int64]],
        dims: Mapping[str, int],
        timeout_s: float,
        urgent_s: float | None = None,
    ) -> LookupResult:
        raise AssertionError("no lookup expected")


class FilledLookup(EmbeddingLookup):
    """Every fid's embedding is ``fill``; shards ``0..shards-1`` report the version asked for (0: none report)."""

    def __init__(self, fill: float, *, shards: int = 0) -> None:
        self._fill = fill
        self._shards = shards

    async def lookup(
        self,
        version: int,
        fids: Mapping[str, npt.NDArray[np.int64]],
        dims: Mapping[str, int],
        timeout_s: float,
        urgent_s: float | None = None,
    ) -> LookupResult:
        values = {table: np.full((len(f), dims[table]), self._fill, dtype=np.float32) for table, f in fids.items()}
        return LookupResult(values, dict.fromkeys(range(self._shards), version))
