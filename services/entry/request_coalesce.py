"""Coalescing concurrent Predicts of one entry version into one pass (``core.coalesce.Coalescer``).

A Predict's fixed costs outweigh its per-example ones at the batch sizes recommendation clients send: one
lookup RPC per PS shard (a gRPC hop, paid on both ends), a dozen numpy calls to plan and pool, one dense
forward pass. So while a pass for a version is running, the Predicts that arrive wait as one group, and
the group runs as ONE pass: its examples concatenated into one batch, one lookup per shard, one pooling,
one dense call; each request gets back its own rows of the scores. At low load nothing waits (no timer).

Requests are parsed and validated each on its own before they join, so a bad request fails alone; an
error of the merged pass (a PS shard down) reaches every request in it. Only requests for the same loaded
version are merged, so version pinning holds; a merged pass holds at most ``max_rows`` examples.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from monolith_serving.core.coalesce import Coalescer, CoalescerCalls
from monolith_serving.core.errors import DeadlineExceededError, UnavailableError
from monolith_serving.entry.request_parser import ParsedBatch, SparseColumn

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RequestCoalescing:
    enabled: bool = True
    # Examples in one merged pass; a request larger than this still runs, alone.
    max_rows: int = 1024


@dataclass(frozen=True)
class PassDeadlines:
    """When a pass must be done: ``ps`` bounds the PS lookup; ``client`` is the client's own deadline, if
    it gave one, else the dense call gets ``dense_default_s`` from when it starts. On ``time.monotonic``."""

    ps: float
    client: float | None
    dense_default_s: float
    # A merged pass: the earliest PS deadline of its requests, when sooner than ``ps`` (the PS attempts are sized
    # for it while it still waits; ``ps_client.call_with_retries``). None for one request.
    ps_urgent: float | None = None

    def dense_timeout_s(self, now: float) -> float:
        return self.client - now if self.client is not None else self.dense_default_s

    @property
    def wait_until(self) -> float:
        """When a request stops waiting for a merged pass: its own deadline, or without one the lookup's and
        then the dense call's default."""
        return self.client if self.client is not None else self.ps + self.dense_default_s

    @staticmethod
    def merged(all_deadlines: Sequence[PassDeadlines]) -> PassDeadlines:
        clients = [d.client for d in all_deadlines]
        latest, earliest = max(d.ps for d in all_deadlines), min(d.ps for d in all_deadlines)
        return PassDeadlines(
            ps=latest,
            ps_urgent=earliest if earliest < latest else None,
            client=None if any(c is None for c in clients) else max(c for c in clients if c is not None),
            dense_default_s=max(d.dense_default_s for d in all_deadlines),
        )


@dataclass(frozen=True)
class PassOutput:
    scores: Float32Array  # [batch_size, output width]
    ps_versions: dict[int, int]  # shard -> PS version that answered


V = TypeVar("V")  # a loaded entry version: only requests for the same object are merged


@dataclass(frozen=True)
class _Request(Generic[V]):
    loaded: V
    batch: ParsedBatch
    deadlines: PassDeadlines


def concat_batches(batches: Sequence[ParsedBatch]) -> ParsedBatch:
    """One batch holding the examples of ``batches`` in order (the sparse rows of batch i shifted by the
    sizes of the batches before it, so each column's rows stay non-decreasing).

    Every column of every batch goes into one fids and one rows array (feature-major), shifted by one add, and
    the merged columns are views into them: a constant number of numpy calls per pass rather than a few per
    (feature, batch), which was most of the merge's cost at the ~6 requests a pass holds.
    """
    num_features = len(batches[0].sparse)
    batch_size = sum(b.batch_size for b in batches)
    dense = np.concatenate([b.dense for b in batches])
    if not num_features:  # a model with dense inputs only
        return ParsedBatch(batch_size=batch_size, sparse=(), dense=dense)
    starts = np.fromiter(
        itertools.accumulate((b.batch_size for b in batches[:-1]), initial=0), dtype=np.int64, count=len(batches)
    )
    columns = [b.sparse[f] for f in range(num_features) for b in batches]
    lengths = np.fromiter((len(c.rows) for c in columns), dtype=np.int64, count=len(columns))
    fids = np.concatenate([c.fids for c in columns])
    rows = np.concatenate([c.rows for c in columns])
    rows += np.repeat(np.tile(starts, num_features), lengths)
    ends = np.cumsum(lengths.reshape(num_features, len(batches)).sum(axis=1)).tolist()
    merged = []
    begin = 0
    for end in ends:
        merged.append(SparseColumn(fids[begin:end], rows[begin:end]))
        begin = end
    return ParsedBatch(batch_size=batch_size, sparse=tuple(merged), dense=dense)


class PredictCoalescer(Generic[V]):
    """``run`` has the signature and result of ``run_pass`` (``(loaded version, batch, deadlines) -> output``:
    plan, look up, pool and score one batch), with concurrent calls for the same loaded version merged."""

    def __init__(
        self,
        run_pass: Callable[[V, ParsedBatch, PassDeadlines], Awaitable[PassOutput]],
        config: RequestCoalescing,
        on_merged: Callable[[int], None] | None = None,
    ) -> None:
        self._run_pass = run_pass
        self._coalescer: Coalescer[int, _Request[V], PassOutput] = Coalescer(
            CoalescerCalls(
                one=self._one,
                many=self._many,
                size=lambda request: request.batch.batch_size,
                expired=lambda key: DeadlineExceededError(
                    "the request's deadline passed while it waited for a merged pass"
                ),
                cancelled=lambda key: UnavailableError("merged Predict pass cancelled (entry shutting down?)"),
            ),
            max_size=config.max_rows,
            on_merged=None if on_merged is None else (lambda key, n: on_merged(n)),
        )

    async def run(self, loaded: V, batch: ParsedBatch, deadlines: PassDeadlines) -> PassOutput:
        return await self._coalescer.submit(id(loaded), _Request(loaded, batch, deadlines), deadlines.wait_until)

    async def _one(self, key: int, request: _Request[V], wait_until: float) -> PassOutput:
        return await self._run_pass(request.loaded, request.batch, request.deadlines)

    async def _many(self, key: int, requests: Sequence[_Request[V]], wait_until: float) -> list[PassOutput]:
        batch = concat_batches([r.batch for r in requests])
        output = await self._run_pass(requests[0].loaded, batch, PassDeadlines.merged([r.deadlines for r in requests]))
        answers = []
        start = 0
        for request in requests:
            end = start + request.batch.batch_size
            answers.append(PassOutput(output.scores[start:end], output.ps_versions))
            start = end
        return answers
