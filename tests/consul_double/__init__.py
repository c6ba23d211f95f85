"""In-repo double of the Consul HTTP API subset used by monolith-serving (see server.py)."""

from .server import ConsulDouble, ConsulState, parse_duration
from .target import ConsulTarget, OffsetClock

__all__ = ["ConsulDouble", "ConsulState", "ConsulTarget", "OffsetClock", "parse_duration"]
