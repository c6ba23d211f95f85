"""What the model manager writes into discovery: v3 saved-model declarations and its rollout-state node.

- **Declarations** (agent v3 only): before a rollout's PS phase every sub_graph of the model (``entry``,
  ``ps_0 … ps_{N-1}``, and ``dense_0`` when the target is ``dense``: a dense_alone model) must be declared
  under ``/{bzid}/saved_models/{model}/{sub_graph}`` with the JSON ``ctl decl`` writes
  (``agent.saved_model_decl.declaration_for``). A declaration is written only when it
  is missing or says something else: unified agents rewrite their child's config and reload it on every
  change, which would undo the manager's ``specific`` config.
- **Rollout state** (v1 and v3): the persistent node ``/{bzid}/model_manager/{model}`` holds JSON
  ``{"model", "serving", "target", "phase", "failed": {version: fingerprint}, "rollback_pin":
  {"version", "hold_floor"} | null, "last_rollout", "updated_at"}``. A restarted manager reads it back so
  it does not retry a failed version whose files did not change, nor roll forward past a rollback pin.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monolith_serving.agent.saved_model_decl import SavedModelDecl, declaration_for
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.serving_spec import DENSE_SUB_MODEL
from monolith_serving.core.zk_paths import saved_model_path
from monolith_serving.discovery.base import Discovery
from monolith_serving.discovery.node_data import load_json_object
from monolith_serving.model_manager.rollout import ModelTarget

logger = logging.getLogger(__name__)


def rollout_state_path(bzid: str, model: str) -> str:
    if not model or "/" in model:
        raise InvalidArgumentError(f"model name {model!r} cannot be a node name")
    return f"/{bzid}/model_manager/{model}"


@dataclass(frozen=True)
class RollbackPin:
    version: int  # the version rolled back to
    hold_floor: int  # only versions above this roll out automatically


@dataclass(frozen=True)
class RolloutState:
    """The persisted part of one model's state (``updated_at`` is wall-clock seconds)."""

    model: str
    serving: int | None = None
    target: int | None = None  # the version a rollout is moving to (None when idle)
    phase: str = "idle"
    failed: dict[int, str] = field(default_factory=dict)  # version -> fingerprint it failed with
    rollback_pin: RollbackPin | None = None
    last_rollout: dict[str, Any] | None = None
    updated_at: float = 0.0

    def content(self) -> dict[str, Any]:
        """Everything but ``updated_at`` (to tell whether a write is needed)."""
        pin = self.rollback_pin
        return {
            "model": self.model,
            "serving": self.serving,
            "target": self.target,
            "phase": self.phase,
            "failed": {str(v): fp for v, fp in sorted(self.failed.items())},
            "rollback_pin": None if pin is None else {"version": pin.version, "hold_floor": pin.hold_floor},
            "last_rollout": self.last_rollout,
        }

    def to_json(self) -> bytes:
        return json.dumps({**self.content(), "updated_at": self.updated_at}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RolloutState:
        obj = load_json_object(data, "rollout state")
        try:
            pin = obj.get("rollback_pin")
            last_rollout = obj.get("last_rollout")
            if last_rollout is not None and not isinstance(last_rollout, dict):
                raise TypeError(f"last_rollout is a {type(last_rollout).__name__}, not an object")
            return cls(
                model=str(obj["model"]),
                serving=_opt_int(obj.get("serving")),
                target=_opt_int(obj.get("target")),
                phase=str(obj.get("phase", "idle")),
                failed={int(v): str(fp) for v, fp in dict(obj.get("failed") or {}).items()},
                rollback_pin=None if pin is None else RollbackPin(int(pin["version"]), int(pin["hold_floor"])),
                last_rollout=last_rollout,
                updated_at=float(obj.get("updated_at", 0.0)),
            )
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:  # Overflow: int(Infinity)
            raise InvalidArgumentError(f"rollout state is not of the expected shape: {error}") from None


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


class RegistryRecorder:
    """Declarations and rollout state of the models of one bzid. Raises what the discovery calls raise
    (UnavailableError while disconnected)."""

    def __init__(self, discovery: Discovery, bzid: str, *, declare_saved_models: bool) -> None:
        self._discovery = discovery
        self._bzid = bzid
        self._declare = declare_saved_models

    async def declare(self, target: ModelTarget) -> list[str]:
        """Makes sure every sub_graph of ``target`` is declared (v3): ``entry``, ``ps_i`` and, when
        ``target.dense``, ``dense_0``; returns the paths written. Declarations of sub_graphs the target
        no longer has (``dense_0`` of an earlier dense_alone version, ``ps_i`` beyond ``num_ps``) are left alone."""
        if not self._declare:
            return []
        base = Path(target.base_dir)
        written = []
        dense = [DENSE_SUB_MODEL] if target.dense else []
        for sub_graph in ["entry", *(f"ps_{i}" for i in range(target.num_ps)), *dense]:
            path = saved_model_path(self._bzid, target.name, sub_graph)
            wanted = declaration_for(base, sub_graph)
            existing = await self._discovery.get_data(path)
            if existing:
                try:
                    if SavedModelDecl.from_json(existing) == wanted:
                        continue
                except InvalidArgumentError:
                    pass  # malformed: replace it
                logger.warning("%s: replacing declaration %s (was %r)", target.name, path, existing[:200])
            await self._discovery.set_persistent(path, wanted.to_json())
            written.append(path)
        if written:
            logger.info("%s: declared %s", target.name, ", ".join(written))
        return written

    async def save(self, state: RolloutState) -> None:
        await self._discovery.set_persistent(rollout_state_path(self._bzid, state.model), state.to_json())

    async def load(self, model: str) -> RolloutState | None:
        """The saved state, or None when there is none (or it is unreadable: logged, then ignored)."""
        data = await self._discovery.get_data(rollout_state_path(self._bzid, model))
        if not data:
            return None
        try:
            state = RolloutState.from_json(data)
        except InvalidArgumentError as error:
            logger.error("%s: ignoring the saved rollout state: %s", model, error.message)
            return None
        if state.model != model:
            logger.error("%s: ignoring a saved rollout state naming model %r", model, state.model)
            return None
        return state
