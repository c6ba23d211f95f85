"""The manager's status: a JSON-ready dict per model (served at ``/status``) and its text rendering.

Why the status command asks the running manager instead of computing it from discovery + GetModelStatus:
only the manager knows the rollout state (phase, target, last outcome), the failed versions and a rollback
pin; the per-replica versions it reports are the ones it observed on its last step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monolith_serving.model_manager.control import VersionState
from monolith_serving.model_manager.rollout import ModelState, RolloutRecord


def record_json(record: RolloutRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "version": record.version,
        "previous": record.previous,
        "outcome": record.outcome.value,
        "reason": record.reason,
        "rollback": record.rollback,
        "cause": None if record.cause is None else record.cause.value,
        "started": record.started_s,
        "finished": record.finished_s,
    }


def serving_versions(state: ModelState) -> dict[str, int | None]:
    """Per sub_graph: the newest version AVAILABLE on every replica of it that answered (None: none)."""
    common: dict[str, set[int] | None] = {}
    for view in state.views.values():
        sub_graph = view.replica.sub_graph
        if view.error:
            common.setdefault(sub_graph, None)
            continue
        current = common.get(sub_graph)
        common[sub_graph] = view.available() if current is None else current & view.available()
    return {s: (max(v) if v else None) for s, v in sorted(common.items())}


def model_status(
    *,
    state: ModelState,
    versions_present: Sequence[int],
    local_versions: Sequence[int],
    failed: Sequence[int],
    hold_floor: int | None,
    first_seen_s: Mapping[int, float],
    now_s: float,
) -> dict[str, Any]:
    newest = max(versions_present) if versions_present else None
    version_delay_s = 0.0
    if newest is not None and newest in first_seen_s:
        appeared = first_seen_s[newest]
        if state.serving is not None and state.serving >= newest and state.serving_since_s is not None:
            version_delay_s = max(0.0, state.serving_since_s - appeared)
        else:
            version_delay_s = max(0.0, now_s - appeared)
    replicas = [
        {
            "sub_graph": view.replica.sub_graph,
            "address": view.replica.address,
            "available": sorted(view.available()),
            "versions": [
                {"version": s.version, "state": VersionState(s.state).name, "error": s.error} for s in view.versions
            ],
            "error": view.error,
        }
        for view in sorted(state.views.values(), key=lambda v: v.replica)
    ]
    return {
        "model": state.target.name,
        "versions_present": list(versions_present),
        "local_versions": list(local_versions),
        "failed_versions": list(failed),
        "serving": state.serving,
        "serving_since": state.serving_since_s,
        "hold_floor": hold_floor,
        "rollout": {
            "phase": state.phase.value,
            "rolling_to": state.rolling_to,
            "desired_ps": list(state.ps_versions),
            "desired_entry": list(state.entry_versions),
            "last": record_json(state.last_rollout),
        },
        "serving_version": serving_versions(state),
        "replicas": replicas,
        "version_delay_seconds": version_delay_s,
        "update_delay_seconds": max(0.0, now_s - state.serving_since_s) if state.serving_since_s else 0.0,
    }


def render_text(snapshot: Mapping[str, Any]) -> str:
    lines = []
    for name, status in sorted(snapshot.get("models", {}).items()):
        rollout = status["rollout"]
        target = f", rolling to {rollout['rolling_to']}" if rollout["rolling_to"] is not None else ""
        lines.append(f"model {name}: serving {status['serving']}  (phase {rollout['phase']}{target})")
        lines.append(f"  versions present: {status['versions_present']}  local: {status['local_versions']}"
                     f"  failed: {status['failed_versions']}")  # fmt: skip
        if status["hold_floor"] is not None:
            lines.append(f"  pinned by a rollback until a version above {status['hold_floor']} appears")
        last = rollout["last"]
        if last is not None:
            kind = "rollback" if last["rollback"] else "rollout"
            reason = f": {last['reason']}" if last["reason"] else ""
            lines.append(f"  last {kind}: {last['previous']} -> {last['version']} {last['outcome']}{reason}")
        for sub_graph, version in status["serving_version"].items():
            lines.append(f"  {sub_graph:<8} serving {version}")
        for replica in status["replicas"]:
            detail = replica["error"] or ", ".join(f"{v['version']}:{v['state']}" for v in replica["versions"])
            lines.append(f"    {replica['sub_graph']:<8} {replica['address']:<24} {detail}")
        lines.append(
            f"  version delay {status['version_delay_seconds']:.1f} s, update delay "
            f"{status['update_delay_seconds']:.1f} s"
        )
    return "\n".join(lines) if lines else "no models managed"
