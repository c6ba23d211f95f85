"""Coalescing concurrent lookups to one PS shard into one RPC (``core.coalesce.Coalescer`` keyed by (shard, version)).

Each Python gRPC hop costs a fixed ~0.3 ms of CPU on both ends whatever its size, so under load the entry
saves most by sending fewer, larger lookups. A merged lookup asks each table's fids merged over the group
and deduplicated; every caller gets back exactly its own rows, in the order of its own fids. A group
reaching ``max_fids`` is sent at once. A caller whose deadline passes while it waits gets
``UnavailableError``, as when the fan-out runs out of deadline itself; an error of the merged call (after
the shard call's own retries) reaches every participant still waiting.

Only lookups for the same version are merged, so version pinning holds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from monolith_serving.core.coalesce import Coalescer, CoalescerCalls
from monolith_serving.core.errors import UnavailableError

Int64Array = npt.NDArray[np.int64]
Float32Array = npt.NDArray[np.float32]

TableFids = Sequence[tuple[str, Int64Array]]
"""One lookup's fids for one shard: (table, unique fids of that table on the shard), tables distinct."""
ShardAnswer = tuple[dict[str, Float32Array], int]
"""table -> rows [len(fids), dim] in the order of the fids asked, and the version the PS reported."""
ShardCall = Callable[[int, int, TableFids, Mapping[str, int], float, float | None], Awaitable[ShardAnswer]]
"""``(shard, version, fids, dims, deadline, urgent) -> answer``: one shard lookup with its retries, deadlines on
``time.monotonic`` (``urgent``: see ``ps_client.call_with_retries``)."""


@dataclass(frozen=True)
class CoalesceConfig:
    enabled: bool = True
    # A pending group holding this many fids is sent without waiting for the in-flight call (bounds the
    # size of one PS request and of the entry's merge work).
    max_fids: int = 16384


@dataclass(frozen=True)
class _Lookup:
    fids: TableFids
    dims: Mapping[str, int]
    urgent: float  # when the most urgent request behind this lookup stops waiting (its own deadline, or sooner)


class ShardCoalescer:
    """Wraps a ``ShardCall``: ``lookup`` has its signature and semantics, with concurrent calls merged."""

    def __init__(
        self,
        call: ShardCall,
        *,
        max_fids: int = CoalesceConfig.max_fids,
        on_coalesced: Callable[[int, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._call = call
        # (shard, lookups merged into one call) after each merged call; for metrics.
        on_merged = None if on_coalesced is None else (lambda key, n: on_coalesced(key[0], n))
        self._coalescer: Coalescer[tuple[int, int], _Lookup, ShardAnswer] = Coalescer(
            CoalescerCalls(
                one=self._one,
                many=self._many,
                size=lambda lookup: sum(len(f) for _, f in lookup.fids),
                expired=lambda key: UnavailableError(
                    f"PS shard {key[0]} lookup: deadline passed while waiting for a coalesced call"
                ),
                cancelled=lambda key: UnavailableError(f"PS shard {key[0]} lookup cancelled (entry shutting down?)"),
            ),
            max_size=max_fids,
            on_merged=on_merged,
            clock=clock,
        )

    async def lookup(
        self,
        shard: int,
        version: int,
        fids: TableFids,
        dims: Mapping[str, int],
        deadline: float,
        urgent: float | None = None,
    ) -> ShardAnswer:
        mine = _Lookup(fids, dims, deadline if urgent is None else min(urgent, deadline))
        return await self._coalescer.submit((shard, version), mine, deadline)

    async def _one(self, key: tuple[int, int], lookup: _Lookup, deadline: float) -> ShardAnswer:
        return await self._call(key[0], key[1], lookup.fids, lookup.dims, deadline, lookup.urgent)

    async def _many(self, key: tuple[int, int], lookups: Sequence[_Lookup], deadline: float) -> list[ShardAnswer]:
        """One call for the whole group; each lookup gets its own rows."""
        merged, slices = merge([lookup.fids for lookup in lookups])
        urgent = min(lookup.urgent for lookup in lookups)  # lookups merged here may have different deadlines
        outputs, reported = await self._call(key[0], key[1], merged, lookups[0].dims, deadline, urgent)
        return [
            ({t: outputs[t] if where is None else outputs[t][where] for t, where in mine.items()}, reported)
            for mine in slices
        ]


def merge(
    lookups: Sequence[TableFids],
) -> tuple[list[tuple[str, Int64Array]], list[dict[str, Int64Array | None]]]:
    """The group's fids per table (deduplicated) and, per lookup, where its rows are in the answer (None: the
    table is that lookup's alone, so all rows in order)."""
    by_table: dict[str, list[tuple[int, Int64Array]]] = {}
    for i, lookup in enumerate(lookups):
        for table, fids in lookup:
            by_table.setdefault(table, []).append((i, fids))
    merged: list[tuple[str, Int64Array]] = []
    slices: list[dict[str, Int64Array | None]] = [{} for _ in lookups]
    for table, parts in by_table.items():
        if len(parts) == 1:
            i, fids = parts[0]
            merged.append((table, fids))
            slices[i][table] = None  # all of it, as asked
            continue
        unique, inverse = np.unique(np.concatenate([f for _, f in parts]), return_inverse=True)
        merged.append((table, unique))
        start = 0
        for i, fids in parts:
            slices[i][table] = inverse[start : start + len(fids)]
            start += len(fids)
    return merged, slices
