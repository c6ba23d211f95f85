"""Where new model versions come from, and when a version counts as complete.

Two layouts (REFERENCE §2 and §10):

- **export base** (``exported_models/``): ``{base}/{sub_model}/{version}/…``, optionally with
  ``{base}/{sub_model}/ExportSaverListenerState`` naming the finished exports;
- **p2p folder**: ``{src}/{model}@{version}/{model}/{sub_model}/{version}/…`` plus a marker file
  ``{src}/{model}@{version}.write.done`` written once the copy into ``src`` is complete.

A version is *complete* when every expected sub-model (``entry`` and ``ps_0 … ps_{N-1}``, N from
``--num_ps`` or the version's own ``entry/{version}/serving_spec.json``) has its version folder, and:
for p2p, the done marker exists; for an export base, every listener-state file lists it and its file
listing did not change since the previous scan (a trainer may still be writing a version folder that has
no listener state). Incomplete versions are silently skipped until they complete.

The fingerprint of a version hashes its file listing (relative path, size, mtime): a failed version is
retried only once its fingerprint changes. Scanners are used from one task at a time (not thread-safe).
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from monolith_serving.core.export_layout import STATE_FILE, parse_version
from monolith_serving.core.serving_spec import SPEC_FILE
from monolith_serving.model_manager.fs import FileSystem

logger = logging.getLogger(__name__)

ENTRY = "entry"
DONE_SUFFIX = ".write.done"
READ_LOCK_SUFFIX = ".read.lock"


@dataclass(frozen=True)
class VersionCandidate:
    """A complete version of a model found in a source."""

    model: str
    version: int
    sub_model_paths: Mapping[str, str]  # sub_model -> its version folder on the source file system
    fingerprint: str
    lock_path: str | None = None  # p2p: the ``{dir}.read.lock`` a reader holds while copying

    @property
    def sub_models(self) -> tuple[str, ...]:
        return tuple(sorted(self.sub_model_paths))


def expected_sub_models(num_ps: int) -> tuple[str, ...]:
    return (ENTRY, *(f"ps_{i}" for i in range(num_ps)))


def fingerprint(fs: FileSystem, sub_model_paths: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for sub_model in sorted(sub_model_paths):
        for info in fs.walk_files(sub_model_paths[sub_model]):
            digest.update(f"{sub_model}/{info.name}\0{info.size}\0{info.mtime:.6f}\n".encode())
    return digest.hexdigest()[:16]


def spec_num_ps(fs: FileSystem, entry_version_path: str) -> int | None:
    """``num_ps`` of an entry version's serving spec, or None when it is missing or unreadable."""
    try:
        data = json.loads(fs.read_text(fs.join(entry_version_path, SPEC_FILE)))
    except (OSError, ValueError):
        return None
    num_ps = data.get("num_ps") if isinstance(data, dict) else None
    return num_ps if isinstance(num_ps, int) and num_ps >= 0 else None


class VersionSource(abc.ABC):
    """Lists the complete versions of one model (blocking: run ``scan`` on an executor)."""

    model: str
    fs: FileSystem
    #: True when replicas cannot load from the source directly and versions must be copied first.
    needs_copy: bool

    @abc.abstractmethod
    def scan(self) -> list[VersionCandidate]:
        """Complete versions, oldest first."""

    @abc.abstractmethod
    def describe(self) -> str: ...


@dataclass
class _Layout:
    """Shared completeness rule: every expected sub-model present."""

    fs: FileSystem
    num_ps: int | None  # None: read it from the entry's serving spec

    def complete_paths(self, version: int, found: Mapping[str, str], where: str) -> dict[str, str] | None:
        entry_path = found.get(ENTRY)
        if entry_path is None:
            return None
        num_ps = self.num_ps if self.num_ps is not None else spec_num_ps(self.fs, entry_path)
        if num_ps is None:
            logger.debug("%s version %d: no readable %s yet", where, version, SPEC_FILE)
            return None
        wanted = expected_sub_models(num_ps)
        if any(s not in found for s in wanted):
            return None
        return {s: found[s] for s in wanted}


@dataclass
class ExportBaseSource(VersionSource):
    """An export base path ``exported_models/`` (local or fsspec). With ``needs_copy`` False, replicas
    load straight from it (it must then be a local path they can see)."""

    fs: FileSystem
    base_path: str
    model: str
    num_ps: int | None = None
    needs_copy: bool = False
    settle_scans: int = 1  # a listing must stay unchanged this many scans before it counts
    _seen: dict[int, tuple[str, int]] = field(default_factory=dict, init=False, repr=False)

    def describe(self) -> str:
        return f"export base {self.base_path}"

    def _listener_versions(self, sub_model_path: str) -> set[int] | None:
        state_path = self.fs.join(sub_model_path, STATE_FILE)
        if not self.fs.exists(state_path):
            return None
        versions: set[int] = set()
        # A text-format ServingModelState; only the export_dir basenames matter here.
        for line in self.fs.read_text(state_path).splitlines():
            key, _, value = line.strip().partition(":")
            if key.strip() == "export_dir":
                version = parse_version(value.strip().strip('"').rstrip("/").rsplit("/", 1)[-1])
                if version is not None:
                    versions.add(version)
        return versions

    def scan(self) -> list[VersionCandidate]:
        layout = _Layout(self.fs, self.num_ps)
        by_version: dict[int, dict[str, str]] = {}
        listed: dict[str, set[int] | None] = {}
        for sub in self.fs.ls(self.base_path):
            if not sub.is_dir:
                continue
            listed[sub.name] = self._listener_versions(sub.path)
            for child in self.fs.ls(sub.path):
                version = parse_version(child.name)
                if version is not None and child.is_dir:
                    by_version.setdefault(version, {})[sub.name] = child.path
        result = []
        seen: dict[int, tuple[str, int]] = {}
        for version in sorted(by_version):
            paths = layout.complete_paths(version, by_version[version], self.describe())
            if paths is None:
                continue
            if any(listed.get(s) is not None and version not in (listed[s] or set()) for s in paths):
                continue  # a listener state exists and does not name this export yet
            print_ = fingerprint(self.fs, paths)
            previous, stable = self._seen.get(version, ("", 0))
            stable = stable + 1 if previous == print_ else 0
            seen[version] = (print_, stable)
            if stable >= self.settle_scans:
                result.append(VersionCandidate(self.model, version, paths, print_))
        self._seen = seen
        return result


@dataclass
class P2pSource(VersionSource):
    """Monolith's p2p folder: ``{model}@{version}`` folders with ``.write.done`` markers; always copied."""

    fs: FileSystem
    source_dir: str
    model: str
    num_ps: int | None = None
    needs_copy: bool = True

    def describe(self) -> str:
        return f"p2p folder {self.source_dir}"

    def scan(self) -> list[VersionCandidate]:
        layout = _Layout(self.fs, self.num_ps)
        entries = self.fs.ls(self.source_dir)
        names = {e.name for e in entries}
        result = []
        prefix = f"{self.model}@"
        for entry in entries:
            if not entry.is_dir or not entry.name.startswith(prefix):
                continue
            version = parse_version(entry.name[len(prefix) :])
            if version is None or entry.name + DONE_SUFFIX not in names:
                continue
            found: dict[str, str] = {}
            for sub in self.fs.ls(self.fs.join(entry.path, self.model)):
                version_path = self.fs.join(sub.path, str(version))
                if sub.is_dir and self.fs.exists(version_path):
                    found[sub.name] = version_path
            paths = layout.complete_paths(version, found, self.describe())
            if paths is None:
                logger.debug("%s: %s is marked done but misses a sub-model", self.describe(), entry.name)
                continue
            result.append(
                VersionCandidate(
                    self.model,
                    version,
                    paths,
                    fingerprint(self.fs, paths),
                    lock_path=entry.path + READ_LOCK_SUFFIX,
                )
            )
        return sorted(result, key=lambda c: c.version)


def newest(candidates: Sequence[VersionCandidate]) -> VersionCandidate | None:
    return max(candidates, key=lambda c: c.version) if candidates else None
