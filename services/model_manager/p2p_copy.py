"""Copying a complete version into the local receive folder, all sub-models or none (REFERENCE §10).

Target layout: ``{receive}/{model}/{sub_model}/{version}``. Protocol, chosen so that a crash (even
``kill -9``) at any point leaves either the whole version visible or none of it:

1. hold the source's ``{dir}.read.lock`` (the writer must not delete the folder meanwhile);
2. copy every sub-model into ``{sub_model}/{version}-temp`` (not a version folder: its name is not an
   integer, so no loader ever sees it);
3. write ``{receive}/{model}/{version}.staged`` — from here on the copy is *committed*;
4. rename each ``-temp`` folder to ``{version}`` (rename is atomic on one file system), remove the marker;
5. release the read lock.

``recover()`` (run at start) rolls a committed copy forward (finishes step 4) and deletes every other
``-temp`` folder. A version counts as received only when every sub-model *that version has* (``entry``,
``ps_0 … ps_{N-1}``, N from ``--num_ps`` or the version's own serving spec: the number of PS shards may
change between versions, leaving other versions' ``ps_i`` folders behind; and ``dense_0`` when that spec's
dense backend is ``remote``, a ``dense_alone`` model) has its folder and no ``.staged`` marker is left
(``received_versions``). Every sub-model of the candidate is copied, ``dense_0`` included when the source
counted it (``sources``: the same rule). A sub-model folder already received with the source's
files (names and sizes) is kept as is, never replaced: a replica may be loading from it. Disk full
(ENOSPC) aborts the copy cleanly: temp folders are removed and ResourceExhaustedError is raised. Blocking
code: run it on an executor thread.

Nothing a source lists is written outside the version's temp folders: the whole listing is checked before
the first byte is written (``fs.check_entries``: a name that is empty, absolute or has an empty, ``.`` or
``..`` segment, a symbolic link or a special file refuses the version with UnsafeEntryError naming the entry,
an InvalidArgumentError the control loop counts as a failed copy), and every destination is checked again,
resolved, to lie inside its temp folder.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from monolith_serving.core.errors import InvalidArgumentError, ResourceExhaustedError, UnavailableError
from monolith_serving.core.export_layout import list_sub_models, list_versions
from monolith_serving.model_manager.fs import FileInfo, FileSystem, LocalFileSystem, UnsafeEntryError, check_entries
from monolith_serving.model_manager.sources import (
    ENTRY,
    READ_LOCK_SUFFIX,
    VersionCandidate,
    expected_sub_models,
    read_entry_spec,
)

logger = logging.getLogger(__name__)

TEMP_SUFFIX = "-temp"
STAGED_SUFFIX = ".staged"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class CopyConfig:
    receive_dir: Path
    rate_limit_bytes_per_s: int = 0  # 0: unlimited (a limit keeps the copy from starving serving traffic)


def _lock_owner() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def received_versions(model_dir: Path, num_ps: int | None = None) -> list[int]:
    """Versions of ``{receive}/{model}`` whose every sub-model is there and fully committed.

    A version's sub-models are ``entry``, ``ps_0 … ps_{N-1}`` with N = ``num_ps`` (``--num_ps``) or else the
    version's own serving spec, and ``dense_0`` when that spec's dense backend is ``remote`` (whatever
    ``num_ps``); a version without a readable spec must be in every sub-model folder."""
    try:
        sub_models = list_sub_models(model_dir)
        entry_versions = list_versions(model_dir / ENTRY)
    except Exception:  # a missing folder: nothing received yet
        return []
    pending = {int(p.name[: -len(STAGED_SUFFIX)]) for p in model_dir.glob(f"*{STAGED_SUFFIX}")}
    received = []
    for version in entry_versions:
        if version in pending:
            continue
        try:
            wanted = _version_sub_models(model_dir, version, num_ps, sub_models)
        except InvalidArgumentError as error:  # e.g. a num_ps above MAX_NUM_PS: it cannot be served
            logger.warning("%s version %d does not count as received: %s", model_dir, version, error.message)
            continue
        if _has_sub_models(model_dir, version, wanted):
            received.append(version)
    return received


def _version_sub_models(model_dir: Path, version: int, num_ps: int | None, present: list[str]) -> tuple[str, ...]:
    """The sub-models ``version`` must have: from ``num_ps``, else its serving spec, else every folder present;
    plus ``dense_0`` when the spec says remote dense. InvalidArgumentError when that number is above
    ``MAX_NUM_PS`` (UnsafeEntryError when the spec is a link)."""
    spec = read_entry_spec(LocalFileSystem(), str(model_dir / ENTRY / str(version)))
    if num_ps is None:
        num_ps = spec.num_ps()
    return expected_sub_models(num_ps, dense=spec.remote_dense) if num_ps is not None else tuple(present)


def _has_sub_models(model_dir: Path, version: int, sub_models: tuple[str, ...]) -> bool:
    return all((model_dir / sub_model / str(version)).is_dir() for sub_model in sub_models)


def _same_files(files: list[FileInfo], local: Path) -> bool:
    """``local`` holds exactly ``files`` (relative names and sizes): a complete copy of their folder."""
    if not local.is_dir():
        return False
    wanted = {info.name: info.size for info in files}
    held = {p.relative_to(local).as_posix(): p.stat().st_size for p in local.rglob("*") if p.is_file()}
    return wanted == held


class VersionCopier:
    """Copies versions from a source file system to the local receive folder (one copy at a time)."""

    def __init__(
        self,
        config: CopyConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._sleep = sleep
        self._clock = clock

    def model_dir(self, model: str) -> Path:
        return self._config.receive_dir / model

    def copy(self, fs: FileSystem, candidate: VersionCandidate) -> int | None:
        """Copies ``candidate`` unless it is already received (None); returns the bytes copied. Sub-models
        already received complete (a crash removed another) are kept, not copied again. UnsafeEntryError,
        before anything is written, when the source lists an entry that must not be copied."""
        model_dir = self.model_dir(candidate.model)
        staged = model_dir / f"{candidate.version}{STAGED_SUFFIX}"
        if not staged.exists() and _has_sub_models(model_dir, candidate.version, candidate.sub_models):
            return None
        if candidate.lock_path is not None:
            fs.write_text(candidate.lock_path, _lock_owner() + "\n")
        temps: list[tuple[Path, Path]] = []
        try:
            listings = {s: fs.walk_files(path) for s, path in sorted(candidate.sub_model_paths.items())}
            for sub_model, files in listings.items():  # all checked before anything is written
                check_entries(files, f"{candidate.model} version {candidate.version} {sub_model}")
            started = self._clock()
            copied = 0
            for sub_model, files in listings.items():
                final = model_dir / sub_model / str(candidate.version)
                if _same_files(files, final):
                    continue  # complete already, and a replica may be loading from it: never replaced
                temp = model_dir / sub_model / f"{candidate.version}{TEMP_SUFFIX}"
                temps.append((temp, final))
                if temp.exists():
                    shutil.rmtree(temp)
                temp.mkdir(parents=True)
                copied = self._copy_tree(fs, files, temp, started, copied)
            staged.write_text("")  # the commit point: recover() finishes the renames from here
            _finish(model_dir, candidate.version)
        except OSError as error:
            _remove_temps(temps)
            if error.errno == errno.ENOSPC:
                raise ResourceExhaustedError(
                    f"disk full while receiving {candidate.model} version {candidate.version} into {model_dir}"
                ) from error
            raise UnavailableError(f"copy of {candidate.model} version {candidate.version} failed: {error}") from error
        except BaseException:
            _remove_temps(temps)
            raise
        finally:
            if candidate.lock_path is not None:
                try:
                    fs.rm(candidate.lock_path)
                except OSError:
                    logger.exception("cannot remove read lock %s", candidate.lock_path)
        logger.info(
            "received %s version %d (%d sub-models, %d bytes) into %s",
            candidate.model, candidate.version, len(candidate.sub_model_paths), copied, model_dir,
        )  # fmt: skip
        return copied

    def _copy_tree(self, fs: FileSystem, files: list[FileInfo], target: Path, started: float, copied: int) -> int:
        root = target.resolve()
        for info in files:
            destination = target / info.name
            if root not in destination.resolve().parents:  # checked names never get here: defence in depth
                raise UnsafeEntryError(f"{info.path}: refused, its copy {destination} would land outside {target}")
            destination.parent.mkdir(parents=True, exist_ok=True)
            # "x": a new file, never written through whatever (a link) might already be there.
            with fs.open_read(info.path) as reader, open(destination, "xb") as writer:
                while chunk := reader.read(CHUNK_BYTES):
                    writer.write(chunk)
                    copied += len(chunk)
                    self._throttle(started, copied)
        return copied

    def _throttle(self, started: float, copied: int) -> None:
        rate = self._config.rate_limit_bytes_per_s
        if rate <= 0:
            return
        ahead_s = copied / rate - (self._clock() - started)
        if ahead_s > 0:
            self._sleep(ahead_s)

    def recover(self, model: str) -> None:
        """Finish committed copies and drop uncommitted temp folders of ``model`` (call before serving)."""
        model_dir = self.model_dir(model)
        if not model_dir.is_dir():
            return
        for staged in sorted(model_dir.glob(f"*{STAGED_SUFFIX}")):
            version = int(staged.name[: -len(STAGED_SUFFIX)])
            logger.warning("%s version %d: finishing a committed copy interrupted before", model, version)
            _finish(model_dir, version)
        for temp in sorted(model_dir.glob(f"*/*{TEMP_SUFFIX}")):
            logger.warning("removing the partial copy %s", temp)
            shutil.rmtree(temp, ignore_errors=True)


def _finish(model_dir: Path, version: int) -> None:
    for temp in sorted(model_dir.glob(f"*/{version}{TEMP_SUFFIX}")):
        final = temp.with_name(str(version))
        if final.exists():
            shutil.rmtree(final)  # only a leftover of an older run can be here: the staged copy wins
        os.rename(temp, final)
    (model_dir / f"{version}{STAGED_SUFFIX}").unlink(missing_ok=True)


def _remove_temps(temps: list[tuple[Path, Path]]) -> None:
    for temp, _final in temps:
        shutil.rmtree(temp, ignore_errors=True)


def remove_stale_locks(fs: FileSystem, source_dir: str, *, alive: Callable[[int], bool] | None = None) -> list[str]:
    """Deletes read locks this host left behind in a crash (its pid is gone); returns their paths."""
    host = socket.gethostname()
    is_alive = alive or _pid_alive
    removed = []
    for info in fs.ls(source_dir):
        if info.is_dir or not info.name.endswith(READ_LOCK_SUFFIX):
            continue
        try:
            owner_host, _, pid = fs.read_text(info.path).strip().partition(" ")
        except OSError:
            continue
        if owner_host == host and pid.isdigit() and not is_alive(int(pid)):
            fs.rm(info.path)
            removed.append(info.path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
