"""Where new model versions come from, and when a version counts as complete.

Two layouts (REFERENCE §2 and §10):

- **export base** (``exported_models/``): ``{base}/{sub_model}/{version}/…``, optionally with
  ``{base}/{sub_model}/ExportSaverListenerState`` naming the finished exports;
- **p2p folder**: ``{src}/{model}@{version}/{model}/{sub_model}/{version}/…`` plus a marker file
  ``{src}/{model}@{version}.write.done`` written once the copy into ``src`` is complete.

A version is *complete* when every expected sub-model (``entry``, ``ps_0 … ps_{N-1}``, N from ``--num_ps``
or the version's own ``entry/{version}/serving_spec.json``, and ``dense_0`` when that spec's dense backend is
``remote``: a ``dense_alone`` model) has its version folder, and: for p2p, the done marker exists; for an
export base, every listener-state file lists it and its file listing did not change since the previous scan
(a trainer may still be writing a version folder that has no listener state). Incomplete versions are
silently skipped until they complete. Only the expected sub-models belong to a version: other folders (a
``ps_i`` beyond N, a ``dense_0`` of a version whose spec does not say ``remote``) are neither copied nor served.

Refused (logged at ERROR once per reason, never listed): a version whose ``num_ps`` is above ``MAX_NUM_PS``
and, below the configured base path (which may itself be a symbolic link, e.g. a mount), a version whose
``{model}@{version}``, sub-model or version folder is a link: links are never followed. A version whose
files cannot be listed or read (an OSError) is skipped with a warning; the others are still listed. What a
version holds is checked where it leaves the source (``fs.check_entries``): by the copier for copied sources,
by the scan for an export base replicas load in place.

The fingerprint of a version hashes its file listing (relative path, size, mtime): a failed version is
retried only once its fingerprint changes. Scanners are used from one task at a time (not thread-safe).
"""

from __future__ import annotations

import abc
import errno
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import STATE_FILE, parse_listener_state, parse_version
from monolith_serving.core.serving_spec import DENSE_SUB_MODEL, SPEC_FILE, DenseBackend
from monolith_serving.model_manager.fs import FileInfo, FileSystem, UnsafeEntryError, check_entries

logger = logging.getLogger(__name__)

ENTRY = "entry"
DONE_SUFFIX = ".write.done"
READ_LOCK_SUFFIX = ".read.lock"
# The most PS shards a version may have. Far above any deployment (Monolith runs tens to a few thousand
# shards; the entry fans every request out to each), yet small enough that the ``ps_i`` names of such a
# version cost nothing: a serving spec naming more is refused rather than trusted with the memory.
MAX_NUM_PS = 1 << 16


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


def expected_sub_models(num_ps: int, *, dense: bool = False) -> tuple[str, ...]:
    """``entry``, ``ps_0 … ps_{num_ps-1}`` and, with ``dense`` (a remote dense backend), ``dense_0``;
    InvalidArgumentError above ``MAX_NUM_PS`` (nothing allocated)."""
    if num_ps > MAX_NUM_PS:
        raise InvalidArgumentError(f"num_ps {num_ps} is above the maximum of {MAX_NUM_PS} PS shards")
    return (ENTRY, *(f"ps_{i}" for i in range(num_ps)), *((DENSE_SUB_MODEL,) if dense else ()))


def fingerprint(fs: FileSystem, sub_model_paths: Mapping[str, str]) -> str:
    return _fingerprint({s: fs.walk_files(p) for s, p in sub_model_paths.items()})


def _fingerprint(listings: Mapping[str, list[FileInfo]]) -> str:
    digest = hashlib.sha256()
    for sub_model in sorted(listings):
        for info in listings[sub_model]:
            digest.update(f"{sub_model}/{info.name}\0{info.size}\0{info.mtime:.6f}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class EntrySpecFile:
    """What the model manager needs of an entry version's serving spec, read once (``read_entry_spec``).
    ``data`` is None when the file is missing or unreadable (a trainer may still be writing it): tolerated,
    never an error. Nothing else of the spec is checked here; the entry validates it when it loads."""

    path: str
    data: Mapping[str, Any] | None

    def num_ps(self) -> int | None:
        """Its ``num_ps``, None when unreadable or not a non-negative integer; InvalidArgumentError, naming
        the file, when it is above ``MAX_NUM_PS``."""
        num_ps = self.data.get("num_ps") if self.data is not None else None
        if not isinstance(num_ps, int) or isinstance(num_ps, bool) or num_ps < 0:
            return None
        if num_ps > MAX_NUM_PS:
            raise InvalidArgumentError(f"{self.path}: num_ps {num_ps} is above the maximum of {MAX_NUM_PS} PS shards")
        return num_ps

    @property
    def remote_dense(self) -> bool:
        """True when its dense backend is ``remote`` (a ``dense_alone`` model: the version needs ``dense_0``).
        Only the backend is looked at, not the whole ``dense`` object through the entry's parser: a malformed
        numpy or onnx part must not change which sub-models make the version complete, and ``remote`` admits
        no sub-model but ``dense_0``."""
        dense = self.data.get("dense") if self.data is not None else None
        return isinstance(dense, dict) and dense.get("backend") == DenseBackend.REMOTE.value


def read_entry_spec(fs: FileSystem, entry_version_path: str) -> EntrySpecFile:
    """The serving spec of an entry version folder (``data`` None when missing, unreadable or not a JSON
    object); UnsafeEntryError when it is a symbolic link (never followed)."""
    path = fs.join(entry_version_path, SPEC_FILE)
    try:
        data = json.loads(fs.read_text(path))
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeEntryError(f"{path} is a symbolic link (links inside a version are never followed)") from error
        return EntrySpecFile(path, None)
    except ValueError:
        return EntrySpecFile(path, None)
    return EntrySpecFile(path, data if isinstance(data, dict) else None)


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
        """The folders of a complete version's expected sub-models, None while incomplete; InvalidArgumentError
        when its ``num_ps`` is above ``MAX_NUM_PS`` (refused: it never completes), UnsafeEntryError when its
        serving spec is a link. The spec is read even with a fixed ``num_ps``: a remote dense backend makes
        ``dense_0`` expected. A ``dense_0`` folder of a version whose spec does not say ``remote`` (or cannot
        be read) is left out, like a ``ps_i`` beyond ``num_ps``: nothing would serve it."""
        entry_path = found.get(ENTRY)
        if entry_path is None:
            return None
        spec = read_entry_spec(self.fs, entry_path)
        num_ps = self.num_ps if self.num_ps is not None else spec.num_ps()
        if num_ps is None:
            logger.debug("%s version %d: no readable %s yet", where, version, SPEC_FILE)
            return None
        if num_ps > MAX_NUM_PS:
            raise InvalidArgumentError(f"num_ps {num_ps} is above the maximum of {MAX_NUM_PS} PS shards")
        if num_ps > sum(1 for s in found if s.startswith("ps_")):
            return None  # some ps_i is missing (known before naming them all)
        wanted = expected_sub_models(num_ps, dense=spec.remote_dense)
        if any(s not in found for s in wanted):
            return None
        return {s: found[s] for s in wanted}


@dataclass
class _Problems:
    """What a scan refused or skipped (versions, or other entries by name), each logged when it first shows
    up: scans repeat every few seconds. One that disappears and comes back is logged again."""

    _logged: dict[int | str, str] = field(default_factory=dict)
    _now: dict[int | str, str] = field(default_factory=dict)

    def start(self) -> None:
        self._now = {}

    def finish(self) -> None:
        self._logged = self._now

    def report(self, where: str, key: int | str, problem: str, *, level: int = logging.ERROR) -> None:
        if key not in self._now and self._logged.get(key) != problem:
            logger.log(level, "%s: %s", where, problem)
        self._now.setdefault(key, problem)

    def refuse(self, where: str, version: int, error: InvalidArgumentError | OSError) -> None:
        """A version refused (InvalidArgumentError: logged at ERROR) or unreadable for now (OSError: a warning)."""
        if isinstance(error, InvalidArgumentError):
            self.report(where, version, f"version {version} refused: {error.message}")
        else:
            self.report(where, version, f"version {version} skipped, cannot be read: {error}", level=logging.WARNING)

    def __contains__(self, key: int | str) -> bool:
        return key in self._now


def _link_error(kind: str, info: FileInfo) -> UnsafeEntryError:
    return UnsafeEntryError(f"its {kind} {info.path} is a symbolic link (links below the base path are not followed)")


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
    _problems: _Problems = field(default_factory=_Problems, init=False, repr=False)

    def describe(self) -> str:
        return f"export base {self.base_path}"

    def _listener_versions(self, sub_model_path: str) -> set[int] | None:
        """The versions the sub-model's listener state names (the basenames of its ``export_dir``s), None without
        one; InvalidArgumentError when it is no ServingModelState."""
        state_path = self.fs.join(sub_model_path, STATE_FILE)
        if not self.fs.exists(state_path):
            return None
        versions: set[int] = set()
        for entry in parse_listener_state(self.fs.read_text(state_path), state_path):
            version = parse_version(entry.export_dir.rstrip("/").rsplit("/", 1)[-1])
            if version is not None:
                versions.add(version)
        return versions

    def scan(self) -> list[VersionCandidate]:
        problems, where = self._problems, self.describe()
        problems.start()
        by_version: dict[int, dict[str, str]] = {}
        listed: dict[str, set[int] | None] = {}
        for sub in self.fs.ls(self.base_path):
            if sub.is_link:
                problems.report(where, sub.name, f"{sub.path} is a symbolic link, ignored (links below the base "
                                "path are not followed)", level=logging.WARNING)  # fmt: skip
            if not sub.is_dir:
                continue
            try:
                listed[sub.name] = self._listener_versions(sub.path)
            except OSError as error:  # names nothing until it can be read: no version of it counts
                problems.report(where, sub.name, f"{STATE_FILE} of {sub.path} cannot be read: {error}")
                listed[sub.name] = set()
            except InvalidArgumentError as error:  # names nothing until the listener rewrites it
                problems.report(where, sub.name, error.message)
                listed[sub.name] = set()
            for child in self.fs.ls(sub.path):
                version = parse_version(child.name)
                if version is not None and child.is_link:
                    problems.refuse(where, version, _link_error("version folder", child))
                elif version is not None and child.is_dir:
                    by_version.setdefault(version, {})[sub.name] = child.path
        result = []
        seen: dict[int, tuple[str, int]] = {}
        for version in sorted(by_version):
            if version in problems:
                continue
            try:
                candidate = self._candidate(version, by_version[version], listed, seen)
            except (InvalidArgumentError, OSError) as error:
                problems.refuse(where, version, error)
                continue
            if candidate is not None:
                result.append(candidate)
        self._seen = seen
        problems.finish()
        return result

    def _candidate(
        self,
        version: int,
        found: dict[str, str],
        listed: Mapping[str, set[int] | None],
        seen: dict[int, tuple[str, int]],
    ) -> VersionCandidate | None:
        paths = _Layout(self.fs, self.num_ps).complete_paths(version, found, self.describe())
        if paths is None:
            return None
        if any(listed.get(s) is not None and version not in (listed[s] or set()) for s in paths):
            return None  # a listener state exists and does not name this export yet
        listings = {s: self.fs.walk_files(p) for s, p in paths.items()}
        if not self.needs_copy:  # replicas load these very files: nothing leading out of the version
            for sub_model, files in listings.items():
                check_entries(files, f"{self.model} version {version} {sub_model}")
        print_ = _fingerprint(listings)
        previous, stable = self._seen.get(version, ("", 0))
        stable = stable + 1 if previous == print_ else 0
        seen[version] = (print_, stable)
        if stable < self.settle_scans:
            return None
        return VersionCandidate(self.model, version, paths, print_)


@dataclass
class P2pSource(VersionSource):
    """Monolith's p2p folder: ``{model}@{version}`` folders with ``.write.done`` markers; always copied."""

    fs: FileSystem
    source_dir: str
    model: str
    num_ps: int | None = None
    needs_copy: bool = True
    _problems: _Problems = field(default_factory=_Problems, init=False, repr=False)

    def describe(self) -> str:
        return f"p2p folder {self.source_dir}"

    def scan(self) -> list[VersionCandidate]:
        problems, where = self._problems, self.describe()
        problems.start()
        entries = self.fs.ls(self.source_dir)
        names = {e.name for e in entries}
        result = []
        prefix = f"{self.model}@"
        for entry in entries:
            if not (entry.is_dir or entry.is_link) or not entry.name.startswith(prefix):
                continue
            version = parse_version(entry.name[len(prefix) :])
            if version is None or entry.name + DONE_SUFFIX not in names:
                continue
            try:
                candidate = self._candidate(version, entry)
            except (InvalidArgumentError, OSError) as error:
                problems.refuse(where, version, error)
                continue
            if candidate is not None:
                result.append(candidate)
        problems.finish()
        return sorted(result, key=lambda c: c.version)

    def _candidate(self, version: int, entry: FileInfo) -> VersionCandidate | None:
        """The version in ``{model}@{version}`` (``entry``), None while it misses a sub-model;
        UnsafeEntryError when a folder on the way is a link."""
        if entry.is_link:
            raise _link_error("folder", entry)
        found: dict[str, str] = {}
        for folder in self.fs.ls(entry.path):
            if folder.name != self.model:
                continue
            if folder.is_link:
                raise _link_error("model folder", folder)
            for sub in self.fs.ls(folder.path) if folder.is_dir else []:
                if sub.is_link:
                    raise _link_error("sub-model folder", sub)
                for child in self.fs.ls(sub.path) if sub.is_dir else []:
                    if child.name == str(version) and child.is_link:
                        raise _link_error("version folder", child)
                    if child.name == str(version) and child.is_dir:
                        found[sub.name] = child.path
        paths = _Layout(self.fs, self.num_ps).complete_paths(version, found, self.describe())
        if paths is None:
            logger.debug("%s: %s is marked done but misses a sub-model", self.describe(), entry.name)
            return None
        return VersionCandidate(
            self.model, version, paths, fingerprint(self.fs, paths), lock_path=entry.path + READ_LOCK_SUFFIX
        )


def newest(candidates: Sequence[VersionCandidate]) -> VersionCandidate | None:
    return max(candidates, key=lambda c: c.version) if candidates else None
