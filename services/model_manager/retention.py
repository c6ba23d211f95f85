"""Deleting old versions from the local receive folder — never one a replica may still serve.

Keeps the newest ``keep`` received versions plus every version in ``in_use`` (what the manager has told
replicas to serve, and what any replica reports loaded). The caller passes ``in_use=None`` when it could not
learn what every replica holds (a status call failed): then nothing is deleted this time.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from monolith_serving.core.export_layout import list_sub_models, list_versions

logger = logging.getLogger(__name__)


def versions_to_delete(present: Iterable[int], keep: int, in_use: Iterable[int]) -> list[int]:
    ordered = sorted(set(present))
    newest = set(ordered[-keep:]) if keep > 0 else set()
    protected = newest | set(in_use)
    return [v for v in ordered if v not in protected]


def prune(model_dir: Path, keep: int, in_use: Iterable[int] | None) -> list[int]:
    """Deletes old versions of every sub-model under ``model_dir``; returns the versions removed."""
    if in_use is None:
        logger.info("retention of %s skipped: not every replica's versions are known", model_dir)
        return []
    if not model_dir.is_dir():
        return []
    sub_models = list_sub_models(model_dir)
    present: set[int] = set()
    for sub_model in sub_models:
        present.update(list_versions(model_dir / sub_model))
    doomed = versions_to_delete(present, keep, in_use)
    for version in doomed:
        # The entry folder goes first: without it the version is no longer complete, so nobody picks it
        # up while its PS folders are being deleted.
        for sub_model in sorted(sub_models, key=lambda s: s != "entry"):
            shutil.rmtree(model_dir / sub_model / str(version), ignore_errors=True)
        logger.info("retention: deleted %s version %d", model_dir.name, version)
    return doomed
