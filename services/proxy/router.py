"""Replica choice and outlier ejection, free of any transport.

Power of two choices on outstanding requests: pick two distinct usable replicas at random and send to
the one with fewer requests in flight. A replica that fails ``consecutive_failures`` times in a row
(transport failures only: UNAVAILABLE or a broken connection) is ejected; after its cool-down the
proxy probes it and readmits it on success, else doubles the cool-down (capped).

If every candidate of a model is ejected the router still picks among them ("panic" routing, as Envoy
does) rather than fail every request on a possibly wrong verdict; discovery, not ejection, decides
which replicas exist. Not thread-safe: one asyncio loop owns it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class OutlierPolicy:
    consecutive_failures: int = 3
    cooldown_s: float = 5.0
    max_cooldown_s: float = 60.0
    probe_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be >= 1, got {self.consecutive_failures}")
        if self.cooldown_s <= 0 or self.max_cooldown_s < self.cooldown_s:
            raise ValueError("need 0 < cooldown_s <= max_cooldown_s")
        if self.probe_timeout_s <= 0:
            raise ValueError("probe_timeout_s must be > 0")


@dataclass(eq=False)
class ReplicaState:
    """Mutable bookkeeping of one replica address (identity-compared)."""

    address: str
    outstanding: int = 0
    consecutive_failures: int = 0
    ejected: bool = False
    probe_at: float = 0.0  # monotonic time after which an ejected replica is probed
    cooldown_s: float = 0.0
    probing: bool = False


class Router:
    """Chooses replicas and keeps their health verdicts; ``clock`` is injectable for tests."""

    def __init__(
        self,
        policy: OutlierPolicy,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._rng = rng or random.Random()
        self._clock = clock
        self._states: dict[str, ReplicaState] = {}

    def state(self, address: str) -> ReplicaState:
        found = self._states.get(address)
        if found is None:
            found = self._states[address] = ReplicaState(address)
        return found

    def pick(self, addresses: Sequence[str], *, exclude: str | None = None) -> ReplicaState | None:
        """A replica among ``addresses`` other than ``exclude``; None when there is no other."""
        usable: list[ReplicaState] = []
        ejected: list[ReplicaState] = []
        for address in addresses:
            if address == exclude:
                continue
            state = self.state(address)
            (ejected if state.ejected else usable).append(state)
        pool = usable or ejected
        if not pool:
            return None
        if len(pool) == 1:
            return pool[0]
        first, second = self._rng.sample(pool, 2)
        return second if second.outstanding < first.outstanding else first

    def on_success(self, state: ReplicaState) -> None:
        state.consecutive_failures = 0

    def on_failure(self, state: ReplicaState) -> bool:
        """Counts a transport failure; True when this failure ejected the replica."""
        state.consecutive_failures += 1
        if state.ejected or state.consecutive_failures < self._policy.consecutive_failures:
            return False
        state.ejected = True
        state.cooldown_s = self._policy.cooldown_s
        state.probe_at = self._clock() + state.cooldown_s
        return True

    def due_for_probe(self) -> list[ReplicaState]:
        """Ejected replicas whose cool-down has passed and that are not being probed; marks them probing."""
        now = self._clock()
        due = [s for s in self._states.values() if s.ejected and not s.probing and s.probe_at <= now]
        for state in due:
            state.probing = True
        return due

    def on_probe(self, state: ReplicaState, healthy: bool) -> None:
        """Readmit after a successful probe; otherwise stay ejected with a doubled cool-down."""
        state.probing = False
        if healthy:
            state.ejected = False
            state.consecutive_failures = 0
            return
        state.cooldown_s = min(state.cooldown_s * 2, self._policy.max_cooldown_s)
        state.probe_at = self._clock() + state.cooldown_s

    def ejected_count(self) -> int:
        return sum(1 for s in self._states.values() if s.ejected)

    def forget_except(self, keep: set[str]) -> list[str]:
        """Drops the state of idle addresses not in ``keep``; returns the dropped addresses."""
        dropped = [a for a, s in self._states.items() if a not in keep and s.outstanding == 0 and not s.probing]
        for address in dropped:
            del self._states[address]
        return dropped
