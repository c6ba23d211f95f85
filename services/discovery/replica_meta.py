"""Node data formats of Monolith's registry: v1 ``ReplicaMeta`` and v3 container-service JSON.

The JSON keys match Monolith exactly so that Monolith readers and ours can share a ZooKeeper tree.
Parsing (``node_data.load_json_object``) is strict about types (a wrong type means the node is skipped)
and lenient about extra keys.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.model_state import ModelState
from monolith_serving.discovery.addresses import AddressFamily, choose_address
from monolith_serving.discovery.node_data import load_json_object


def _optional_str(obj: dict[str, Any], key: str, what: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidArgumentError(f"{what}: {key!r} must be a string, got {value!r}")
    return value


def _int(obj: dict[str, Any], key: str, default: int, what: str) -> int:
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what}: {key!r} must be an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class ReplicaMeta:
    """Data of a v1 replica node ``/{bzid}/service/{model}/[{idc}:{cluster}/]{type}:{task}/{replica}``.

    ``stat`` is a ModelVersionStatus.State value; a replica is usable only when it is AVAILABLE (30).
    """

    address: str | None = None  # "host:port" of the serving gRPC endpoint
    address_ipv6: str | None = None  # "[host]:port"
    stat: int = ModelState.UNKNOWN
    model_name: str | None = None
    server_type: str | None = None  # "ps" | "entry" | "dense"
    task: int = -1
    replica: int = -1
    archon_address: str | None = None
    archon_address_ipv6: str | None = None

    @property
    def available(self) -> bool:
        return self.stat == ModelState.AVAILABLE

    def serving_address(self, prefer: AddressFamily = AddressFamily.IPV4) -> str | None:
        """The gRPC address to dial (``addresses.choose_address``): ``0.0.0.0:port`` falls back to IPv6."""
        return choose_address(self.address, self.address_ipv6, prefer)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ReplicaMeta:
        """Parse node data; raises InvalidArgumentError on bad JSON or wrong types (unknown keys ignored)."""
        what = "ReplicaMeta"
        obj = load_json_object(data, what)
        strings = {
            f.name: _optional_str(obj, f.name, what) for f in fields(cls) if f.name not in ("stat", "task", "replica")
        }
        return cls(
            stat=_int(obj, "stat", ModelState.UNKNOWN, what),
            task=_int(obj, "task", -1, what),
            replica=_int(obj, "replica", -1, what),
            **strings,
        )


@dataclass(frozen=True)
class ContainerServiceInfo:
    """Data of a v3 node ``/{bzid}/container_service/{ctx_cluster}:{ctx_id}``."""

    grpc: str | None = None
    http: str | None = None
    archon: str | None = None
    agent: str | None = None
    idc: str | None = None
    debug_info: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ContainerServiceInfo:
        what = "container_service"
        obj = load_json_object(data, what)
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = obj.get(f.name)
            if f.name == "debug_info" and value is not None and not isinstance(value, str):
                value = json.dumps(value)  # free-form diagnostics; keep whatever a writer put there
            elif value is not None and not isinstance(value, str):
                raise InvalidArgumentError(f"{what}: {f.name!r} must be a string, got {value!r}")
            values[f.name] = value
        return cls(**values)
