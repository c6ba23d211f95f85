"""``ReplicaProbeStateManager``: per-replica probe outcomes, eviction and readmission.

A replica is evicted after ``failures_to_evict`` consecutive unhealthy probes and readmitted by the next
healthy one. With probes every ``interval`` (fixed rate) and a probe timeout <= ``interval``, a replica that
dies is evicted within ``(failures_to_evict + 1) * interval``; the default 2 gives the 3-interval bound.
Not thread-safe: use from one asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from monolith_serving.core.cancellation import cancelled_by_caller
from monolith_serving.replica_manager.prober import ProbeResult, ProbeTarget

log = logging.getLogger(__name__)

__all__ = ["ProbeRecord", "ReplicaProbeStateManager"]

Probe = Callable[[ProbeTarget], Awaitable[ProbeResult]]
# Called with (target, evicted) when a replica is evicted (True) or readmitted (False).
TransitionListener = Callable[[ProbeTarget, bool], None]


@dataclass
class ProbeRecord:
    failures: int = 0  # consecutive unhealthy probes
    evicted: bool = False
    version: int | None = None
    last_error: str | None = None
    probes: int = 0


class ReplicaProbeStateManager:
    def __init__(
        self,
        *,
        probe: Probe,
        failures_to_evict: int = 2,
        on_transition: TransitionListener | None = None,
    ) -> None:
        if failures_to_evict < 1:
            raise ValueError(f"failures_to_evict must be >= 1, got {failures_to_evict}")
        self._probe = probe
        self._failures_to_evict = failures_to_evict
        self._on_transition = on_transition
        self._records: dict[ProbeTarget, ProbeRecord] = {}

    def record(self, target: ProbeTarget) -> ProbeRecord | None:
        return self._records.get(target)

    def is_evicted(self, target: ProbeTarget) -> bool:
        record = self._records.get(target)
        return record is not None and record.evicted

    async def _safe_probe(self, target: ProbeTarget) -> ProbeResult:
        try:
            return await self._probe(target)
        except asyncio.CancelledError:
            if cancelled_by_caller():
                raise
            # A gRPC call cut off under the probe (its channel closed) raises CancelledError although nobody
            # stopped this round: a failed probe, not the end of probing.
            log.warning("probe of %s (%s) was cut off", target.address, target.model_name)
            return ProbeResult(healthy=False, error="probe cut off (CancelledError)")
        except Exception as exc:
            # A bug in a probe must not stop the other probes; the replica counts as not answering.
            log.exception("probe of %s failed", target.address)
            return ProbeResult(healthy=False, error=f"probe error: {exc!r}")

    async def update(self, targets: Iterable[ProbeTarget]) -> None:
        """Probe every target concurrently once and apply the outcomes; forget targets not given."""
        wanted = set(targets)
        for gone in [t for t in self._records if t not in wanted]:
            del self._records[gone]
        ordered = sorted(wanted, key=lambda t: (t.address, t.model_name or ""))
        results = await asyncio.gather(*(self._safe_probe(t) for t in ordered))
        for target, result in zip(ordered, results, strict=True):
            self._apply(target, result)

    def _apply(self, target: ProbeTarget, result: ProbeResult) -> None:
        record = self._records.setdefault(target, ProbeRecord())
        record.probes += 1
        if result.version is not None:
            record.version = result.version
        if result.healthy:
            record.failures = 0
            record.last_error = None
            if record.evicted:
                record.evicted = False
                log.info("replica %s (%s) answers again: readmitted", target.address, target.model_name)
                self._notify(target, evicted=False)
            return
        record.failures += 1
        record.last_error = result.error
        if not record.evicted and record.failures >= self._failures_to_evict:
            record.evicted = True
            log.warning(
                "replica %s (%s) evicted after %d failed probes: %s",
                target.address,
                target.model_name,
                record.failures,
                result.error,
            )
            self._notify(target, evicted=True)

    def _notify(self, target: ProbeTarget, *, evicted: bool) -> None:
        if self._on_transition is None:
            return
        try:
            self._on_transition(target, evicted)
        except Exception:
            log.exception("eviction listener failed")
