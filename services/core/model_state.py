"""Load states of a model version, numbered as TF Serving's ModelVersionStatus.State (REFERENCE §3).

The same numbers appear in GetModelStatus responses and in the ``stat`` key of ZooKeeper ReplicaMeta JSON.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol, TypeVar

from monolith_serving.core.errors import NotFoundError, UnavailableError


class ModelState(enum.IntEnum):
    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


# How many ended versions (unloaded, or failed) a server keeps reporting in GetModelStatus once its policy no longer
# wants them. Older ones are forgotten, with their metric series: a model that gets a new version every hour would
# otherwise grow its status answer, which the model manager and agents poll every few seconds, and its per-version
# gauge series, by 720 a month.
ENDED_VERSIONS_KEPT = 10


class _HasState(Protocol):
    @property
    def state(self) -> ModelState: ...


V = TypeVar("V", bound=_HasState)
M = TypeVar("M")


def served_model(models: Mapping[str, M], name: str) -> M:
    """``models[name]``, or NOT_FOUND listing what this server hosts."""
    model = models.get(name)
    if model is None:
        served = ", ".join(sorted(models)) or "none"
        raise NotFoundError(f"model {name!r} is not served here (serving: {served})")
    return model


def choose_version(
    name: str,
    *,
    versions: Mapping[int, V],
    serving: V | None,
    labels: Mapping[str, int],
    version: int | None = None,
    label: str = "",
) -> V:
    """The version a request gets: pinned by number or label (NOT_FOUND unless AVAILABLE), else the serving
    one (UNAVAILABLE while none is AVAILABLE yet)."""
    if label:
        if label not in labels:
            raise NotFoundError(f"model {name!r} has no version label {label!r}")
        version = labels[label]
    if version is None:
        if serving is None:
            raise UnavailableError(f"model {name!r} has no AVAILABLE version yet")
        return serving
    pinned = versions.get(version)
    if pinned is None or pinned.state is not ModelState.AVAILABLE:
        raise NotFoundError(f"version {version} of model {name!r} is not available")
    return pinned
