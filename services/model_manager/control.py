"""The small interface the rollout coordinator drives replicas through (no transport here).

``grpc_control.GrpcReplicaControl`` implements it over TF Serving's ModelService with replica addresses
from discovery (or a static list); unit tests use an in-memory fake of this interface.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from monolith_serving.core.model_state import ModelState
from monolith_serving.core.serving_spec import DENSE_SUB_MODEL


class ServerKind(enum.StrEnum):
    PS = "ps"
    DENSE = "dense"  # the dense_0 server of a dense_alone model: loads versions beside the PS, before the entries
    ENTRY = "entry"


VersionState = ModelState  # the manager names it VersionState


@dataclass(frozen=True, order=True)
class Replica:
    """One serving process of a model: an entry, a replica of PS shard ``task``, or a dense server (task 0)."""

    kind: ServerKind
    task: int
    address: str  # host:port of its gRPC ModelService

    @property
    def sub_graph(self) -> str:
        if self.kind is ServerKind.ENTRY:
            return "entry"
        if self.kind is ServerKind.DENSE:
            return DENSE_SUB_MODEL
        return f"ps_{self.task}"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: VersionState
    error: str = ""  # non-empty when the version ended because its load failed

    @property
    def failed(self) -> bool:
        return self.state is VersionState.END and bool(self.error)


@dataclass(frozen=True)
class LoadConfig:
    """What one replica is told to serve: ``specific { versions }`` of one sub-model, or (``drop``) no model.

    ``drop`` is how an entry is told to serve nothing: an entry keeps serving its current versions under
    an empty ``specific {}`` (its reloads preserve availability), so it is left out of the ModelServerConfig
    instead (alone at its address: an empty model list). A PS unloads everything under ``specific {}`` and
    keeps answering GetModelStatus.
    """

    served_name: str  # model_spec.name: "ps_0" / "dense_0" / "entry" (agent v1) or "model:ps_0" (v3)
    base_path: str  # the sub-model folder the replica loads versions from
    versions: tuple[int, ...]  # sorted; empty serves nothing
    drop: bool = False  # send an empty model list (the replica stops hosting the model)


class ReplicaControl(abc.ABC):
    """Listing, status and reconfiguration of a model's replicas. Methods raise package errors
    (UnavailableError when a replica cannot be reached, NotFoundError when it does not host the model)."""

    @abc.abstractmethod
    def replicas(self, model: str) -> list[Replica]:
        """Every known replica of ``model`` with an address (any state), sorted."""

    @abc.abstractmethod
    async def status(self, replica: Replica, served_name: str, timeout_s: float) -> list[VersionStatus]:
        """The versions the replica holds of ``served_name``, in any state."""

    @abc.abstractmethod
    async def reload(self, address: str, configs: Sequence[LoadConfig], timeout_s: float) -> None:
        """Replace the whole model config at ``address`` with ``configs`` (may return before loading
        finishes). A reload config is the address's entire model set (TF Serving semantics): a unified
        container hosting several sub-models unloads every one left out, so ``configs`` must name all of
        them; ``drop`` ones are left out, and no config left is an empty model list. DeadlineExceededError
        after ``timeout_s``: the replica may still be applying it (our servers finish a reload whose caller
        stopped waiting)."""

    async def retain(self, addresses: set[str]) -> None:  # noqa: B027 -- optional: most controls hold nothing
        """Releases what is held for replicas at any address not in ``addresses`` (e.g. cached connections);
        a later call to such an address opens it again. Holds nothing by default."""
