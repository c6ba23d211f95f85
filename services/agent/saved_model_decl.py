"""v3 saved-model declarations: ``/{bzid}/saved_models/{model}/{sub_graph}`` =
``{"model_base_path": "...", "version_policy": "latest" | "latest_once" | "all" | "specific"}``.

Read as Monolith's v3 agent reads them (``gen_model_config`` with its default version data, 1): the policy in any
case, ``specific`` meaning version 1.

Written by ``monolith-serving ctl decl``, read by unified agents. Entry sub-graphs are declared
``latest`` (follow new exports), PS ones ``latest_once`` (load once; a new version needs an explicit
reload, so the entry and its PS shards switch together).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import PolicyKind, VersionPolicy
from monolith_serving.discovery.node_data import load_json_object

__all__ = ["SavedModelDecl", "declaration_for", "default_policy_for"]

_POLICIES = {kind.value for kind in PolicyKind}
# Monolith's v3 agent builds a declared policy with its default version data: ``specific`` serves version 1.
_DECLARED_SPECIFIC_VERSIONS = (1,)


def default_policy_for(sub_graph: str) -> str:
    return PolicyKind.LATEST.value if sub_graph == "entry" else PolicyKind.LATEST_ONCE.value


@dataclass(frozen=True, kw_only=True)
class SavedModelDecl:
    model_base_path: str
    version_policy: str

    def __post_init__(self) -> None:
        if not self.model_base_path:
            raise InvalidArgumentError("saved_model declaration: 'model_base_path' is empty")
        if self.version_policy not in _POLICIES:
            raise InvalidArgumentError(
                f"saved_model declaration: version_policy {self.version_policy[:100]!r} not one of {sorted(_POLICIES)}"
            )

    @property
    def policy(self) -> VersionPolicy:
        kind = PolicyKind(self.version_policy)
        if kind is PolicyKind.SPECIFIC:
            return VersionPolicy(kind, versions=_DECLARED_SPECIFIC_VERSIONS)
        return VersionPolicy(kind)

    def to_json(self) -> bytes:
        return json.dumps({"model_base_path": self.model_base_path, "version_policy": self.version_policy}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SavedModelDecl:
        """Parse node data; raises InvalidArgumentError (only) when it is malformed."""
        obj = load_json_object(data, "saved_model declaration")
        base, policy = obj.get("model_base_path"), obj.get("version_policy", PolicyKind.LATEST.value)
        if not isinstance(base, str) or not isinstance(policy, str):
            raise InvalidArgumentError("saved_model declaration needs string 'model_base_path' and 'version_policy'")
        return cls(model_base_path=base, version_policy=policy.lower())


def declaration_for(export_base: Path | str, sub_graph: str) -> SavedModelDecl:
    """What ``ctl decl`` declares for ``sub_graph`` of ``export_base`` (the model manager declares the
    models it rolls out with the same function, so both write identical JSON). A URI (``hdfs://nn/x``)
    is joined as text: ``Path`` would fold its ``//``."""
    if isinstance(export_base, str) and "://" in export_base:
        base_path = f"{export_base.rstrip('/')}/{sub_graph}"
    else:
        base_path = str(Path(export_base) / sub_graph)
    return SavedModelDecl(model_base_path=base_path, version_policy=default_policy_for(sub_graph))
