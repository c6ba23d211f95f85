"""Where the Consul tests point: a real agent or the double, with a way to let Consul time pass."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .server import ConsulDouble


class OffsetClock:
    """Monotonic time plus a test-controlled offset: lets a test jump past TTLs instantly."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset_s


@dataclass
class ConsulTarget:
    """Where the Consul tests point: a real agent (CONSUL_HTTP_ADDR) or the in-repo double."""

    address: str
    double: ConsulDouble | None
    clock: OffsetClock | None = None

    @property
    def real(self) -> bool:
        return self.double is None

    def pass_time(self, seconds: float) -> None:
        """Let ``seconds`` of Consul time pass: instantly on the double, really on a real agent."""
        if self.clock is not None:
            self.clock.offset_s += seconds
            time.sleep(0.2)  # the double's reaper runs every 50 ms
        else:
            time.sleep(seconds)
