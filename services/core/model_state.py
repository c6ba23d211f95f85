"""Load states of a model version, numbered as TF Serving's ModelVersionStatus.State (REFERENCE §3).

The same numbers appear in GetModelStatus responses and in the ``stat`` key of ZooKeeper ReplicaMeta JSON.
"""

from __future__ import annotations

import enum


class ModelState(enum.IntEnum):
    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50
