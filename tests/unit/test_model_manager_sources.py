"""Version sources (export base, p2p folder) on local disk and on fsspec's memory file system, the
all-or-nothing copy into the receive folder, and retention."""

from __future__ import annotations

import errno
import shutil
import socket
import uuid
from pathlib import Path
from typing import BinaryIO

import fsspec
import pytest

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import ResourceExhaustedError
from monolith_serving.core.export_layout import list_versions, write_listener_state
from monolith_serving.core.serving_spec import SPEC_FILE
from monolith_serving.model_manager.fs import FileSystem, LocalFileSystem, UnsafeEntryError, open_filesystem
from monolith_serving.model_manager.p2p_copy import (
    CopyConfig,
    VersionCopier,
    received_versions,
    remove_stale_locks,
)
from monolith_serving.model_manager.retention import prune, versions_to_delete
from monolith_serving.model_manager.sources import ExportBaseSource, P2pSource, read_entry_spec

MODEL = "demo"


def export(out: Path, version: int, num_ps: int = 2, *, dense_alone: bool = False) -> None:
    write_demo(
        DemoOptions(out=out, num_ps=num_ps, rows=20, version=version, files_per_partition=1, dense_alone=dense_alone)
    )


def p2p_version(src: Path, version: int, *, done: bool = True, num_ps: int = 2, dense_alone: bool = False) -> Path:
    folder = src / f"{MODEL}@{version}"
    export(folder / MODEL, version, num_ps, dense_alone=dense_alone)
    if done:
        (src / f"{MODEL}@{version}.write.done").write_text("")
    return folder


def test_export_base_needs_every_sub_model_and_a_stable_listing(tmp_path: Path) -> None:
    export(tmp_path, 1)
    export(tmp_path, 2)
    source = ExportBaseSource(LocalFileSystem(), str(tmp_path), MODEL)
    assert source.scan() == []  # first sight: not yet known to be stable
    assert [c.version for c in source.scan()] == [1, 2]
    # Version 3 is missing ps_1: ignored until complete (its folders are moved in as a trainer renames them).
    export(tmp_path / "partial", 3)
    (tmp_path / "partial" / "entry" / "3").rename(tmp_path / "entry" / "3")
    (tmp_path / "partial" / "ps_0" / "3").rename(tmp_path / "ps_0" / "3")
    assert [c.version for c in source.scan()] == [1, 2]
    (tmp_path / "partial" / "ps_1" / "3").rename(tmp_path / "ps_1" / "3")
    assert [c.version for c in source.scan()] == [1, 2]  # changed listing: settles first
    candidates = source.scan()
    assert [c.version for c in candidates] == [1, 2, 3]
    assert candidates[-1].sub_models == ("entry", "ps_0", "ps_1")


def test_export_base_honours_the_listener_state(tmp_path: Path) -> None:
    export(tmp_path, 1)
    export(tmp_path, 2)
    for sub_model in ("entry", "ps_0", "ps_1"):
        write_listener_state(tmp_path / sub_model, [(str(tmp_path / sub_model / "1"), 10)])
    source = ExportBaseSource(LocalFileSystem(), str(tmp_path), MODEL, settle_scans=0)
    assert [c.version for c in source.scan()] == [1]
    write_listener_state(tmp_path / "ps_1", [(str(tmp_path / "ps_1" / "1"), 10), (str(tmp_path / "ps_1" / "2"), 20)])
    assert [c.version for c in source.scan()] == [1]  # entry and ps_0 do not list 2 yet


def test_export_base_reads_the_listener_state_as_the_text_proto_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One line or many, fields in any order (as text_format allows); a file that is no ServingModelState names no
    version (logged once) until it is rewritten."""
    export(tmp_path, 1)
    export(tmp_path, 2)
    for sub_model in ("entry", "ps_0"):
        write_listener_state(tmp_path / sub_model, [(str(tmp_path / sub_model / "2"), 20)])
    state = tmp_path / "ps_1" / "ExportSaverListenerState"
    state.write_text(f'entries {{ global_step: 20 export_dir: "{tmp_path / "ps_1" / "2"}/" }}')
    source = ExportBaseSource(LocalFileSystem(), str(tmp_path), MODEL, settle_scans=0)
    assert [c.version for c in source.scan()] == [2]
    state.write_text('entries { export_dir: "unterminated }')
    assert source.scan() == [] and source.scan() == []
    assert [r.getMessage().count("not a text-format ServingModelState") for r in caplog.records] == [1]
    state.write_text(f'entries {{ export_dir: "{tmp_path / "ps_1" / "2"}" }}')
    assert [c.version for c in source.scan()] == [2]


def files_below(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def spec_remote_dense(fs: FileSystem, entry_version_path: str) -> bool:
    return read_entry_spec(fs, entry_version_path).remote_dense


def test_spec_remote_dense_reads_only_the_dense_backend(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    export(tmp_path / "alone", 1, dense_alone=True)
    export(tmp_path / "plain", 1)
    assert spec_remote_dense(fs, str(tmp_path / "alone" / "entry" / "1"))
    assert not spec_remote_dense(fs, str(tmp_path / "plain" / "entry" / "1"))
    assert not spec_remote_dense(fs, str(tmp_path / "missing" / "entry" / "1"))  # tolerated: not there yet
    odd = tmp_path / "odd"
    odd.mkdir()
    for text in ("{not json", "[]", '{"dense": "remote"}', '{"dense": {"backend": "onnx"}}'):
        (odd / SPEC_FILE).write_text(text)
        assert not spec_remote_dense(fs, str(odd))
    (odd / SPEC_FILE).write_text('{"dense": {"backend": "remote", "sub_model": "dense_0"}}')  # no num_ps: still read
    assert spec_remote_dense(fs, str(odd))
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / SPEC_FILE).symlink_to(tmp_path / "alone" / "entry" / "1" / SPEC_FILE)
    with pytest.raises(UnsafeEntryError, match="symbolic link"):
        spec_remote_dense(fs, str(linked))


@pytest.mark.parametrize("num_ps", [None, 2])
def test_export_base_dense_alone_version_needs_its_dense_0(tmp_path: Path, num_ps: int | None) -> None:
    """A version whose spec says remote dense is complete only with dense_0 too (also with ``--num_ps`` fixed),
    and its candidate names dense_0; a plain version ignores a stray dense_0 folder, as before."""
    base = tmp_path / "base"
    export(tmp_path / "staging", 1, dense_alone=True)
    for sub_model in ("entry", "ps_0", "ps_1"):  # dense_0 still being written by the trainer
        (base / sub_model).mkdir(parents=True)
        (tmp_path / "staging" / sub_model / "1").rename(base / sub_model / "1")
    export(base, 2)
    (base / "dense_0" / "2").mkdir(parents=True)  # not in version 2's spec: not part of it
    (base / "dense_0" / "2" / "stray").write_text("x")
    source = ExportBaseSource(LocalFileSystem(), str(base), MODEL, num_ps=num_ps, settle_scans=0)
    [plain] = source.scan()
    assert plain.version == 2 and plain.sub_models == ("entry", "ps_0", "ps_1")
    (tmp_path / "staging" / "dense_0" / "1").rename(base / "dense_0" / "1")
    candidates = {c.version: c for c in source.scan()}
    assert sorted(candidates) == [1, 2]
    assert candidates[1].sub_models == ("dense_0", "entry", "ps_0", "ps_1")
    assert candidates[1].sub_model_paths["dense_0"] == str(base / "dense_0" / "1")
    assert candidates[2].sub_models == ("entry", "ps_0", "ps_1")


@pytest.mark.parametrize("num_ps", [None, 2])
def test_p2p_dense_alone_version_is_copied_with_its_dense_0(tmp_path: Path, num_ps: int | None) -> None:
    src, receive = tmp_path / "src", tmp_path / "receive"
    half = p2p_version(src, 1, dense_alone=True)
    shutil.rmtree(half / MODEL / "dense_0")  # marked done, but dense_0 is missing: never counts
    p2p_version(src, 2, dense_alone=True)
    p2p_version(src, 3)
    fs = LocalFileSystem()
    candidates = {c.version: c for c in P2pSource(fs, str(src), MODEL, num_ps=num_ps).scan()}
    assert sorted(candidates) == [2, 3]
    assert candidates[2].sub_models == ("dense_0", "entry", "ps_0", "ps_1")
    assert candidates[3].sub_models == ("entry", "ps_0", "ps_1")
    copier = VersionCopier(CopyConfig(receive))
    assert copier.copy(fs, candidates[2]) and copier.copy(fs, candidates[3])
    model_dir = receive / MODEL
    dense = files_below(model_dir / "dense_0" / "2")
    assert "dense_spec.json" in dense
    assert dense == files_below(src / f"{MODEL}@2" / MODEL / "dense_0" / "2")
    assert not (model_dir / "dense_0" / "3").exists()
    assert received_versions(model_dir, num_ps=num_ps) == [2, 3]
    assert copier.copy(fs, candidates[2]) is None  # received, dense_0 included


@pytest.mark.parametrize("num_ps", [None, 2])
def test_a_received_dense_alone_version_counts_only_with_its_dense_0(tmp_path: Path, num_ps: int | None) -> None:
    model_dir = tmp_path / "receive" / MODEL
    export(model_dir, 1, dense_alone=True)
    export(model_dir, 2)
    export(model_dir, 3, dense_alone=True)
    assert received_versions(model_dir, num_ps=num_ps) == [1, 2, 3]
    shutil.rmtree(model_dir / "dense_0" / "3")  # e.g. a copy made before dense_0 was copied at all
    assert received_versions(model_dir, num_ps=num_ps) == [1, 2]
    shutil.rmtree(model_dir / "dense_0")
    assert received_versions(model_dir, num_ps=num_ps) == [2]  # the plain version needs no dense_0


def test_fingerprint_changes_with_the_files(tmp_path: Path) -> None:
    export(tmp_path, 1)
    source = ExportBaseSource(LocalFileSystem(), str(tmp_path), MODEL, settle_scans=0)
    before = source.scan()[0].fingerprint
    assert source.scan()[0].fingerprint == before
    (tmp_path / "ps_0" / "1" / "assets" / "extra").write_bytes(b"x")
    assert source.scan()[0].fingerprint != before


def test_p2p_source_needs_the_done_marker_and_all_sub_models(tmp_path: Path) -> None:
    p2p_version(tmp_path, 1)
    p2p_version(tmp_path, 2, done=False)
    broken = p2p_version(tmp_path, 3)
    shutil.rmtree(broken / MODEL / "ps_1")
    (tmp_path / "other@4").mkdir()
    source = P2pSource(LocalFileSystem(), str(tmp_path), MODEL)
    candidates = source.scan()
    assert [c.version for c in candidates] == [1]
    assert candidates[0].lock_path == str(tmp_path / f"{MODEL}@1.read.lock")


def test_p2p_on_the_memory_filesystem_copies_into_the_receive_folder(tmp_path: Path) -> None:
    local = tmp_path / "src"
    p2p_version(local, 5)
    fs, root = open_filesystem(f"memory://p2p-{uuid.uuid4().hex}")
    memory = fsspec.filesystem("memory")
    for info in LocalFileSystem().walk_files(str(local)):
        memory.pipe_file(fs.join(root, info.name), Path(info.path).read_bytes())
    source = P2pSource(fs, root, MODEL)
    [candidate] = source.scan()
    assert candidate.version == 5
    copier = VersionCopier(CopyConfig(tmp_path / "receive"))
    copied = copier.copy(fs, candidate)
    assert copied is not None and copied > 0
    assert received_versions(tmp_path / "receive" / MODEL) == [5]
    assert not fs.exists(candidate.lock_path or "")  # lock released
    version_dir = local / f"{MODEL}@5" / MODEL
    original = sorted(p.relative_to(version_dir) for p in version_dir.rglob("*") if p.is_file())
    received = sorted(
        p.relative_to(tmp_path / "receive" / MODEL) for p in (tmp_path / "receive").rglob("*") if p.is_file()
    )
    assert original == received
    assert copier.copy(fs, candidate) is None  # already received


class RecordingFs(LocalFileSystem):
    """Local files, but reading fails with ENOSPC-like errors after ``fail_after`` files, and the read lock
    is checked while reading."""

    def __init__(self, fail_after: int, lock: str) -> None:
        self.fail_after = fail_after
        self.opened = 0
        self.lock = lock
        self.lock_seen = False

    def open_read(self, path: str) -> BinaryIO:
        self.lock_seen = self.lock_seen or self.exists(self.lock)
        self.opened += 1
        if self.opened > self.fail_after:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().open_read(path)


def test_disk_full_aborts_the_copy_and_leaves_nothing_behind(tmp_path: Path) -> None:
    p2p_version(tmp_path / "src", 1)
    [candidate] = P2pSource(LocalFileSystem(), str(tmp_path / "src"), MODEL).scan()
    assert candidate.lock_path is not None
    fs = RecordingFs(fail_after=3, lock=candidate.lock_path)
    copier = VersionCopier(CopyConfig(tmp_path / "receive"))
    with pytest.raises(ResourceExhaustedError, match="disk full"):
        copier.copy(fs, candidate)
    assert fs.lock_seen and not Path(candidate.lock_path).exists()
    leftovers = [p for p in (tmp_path / "receive").rglob("*") if p.is_file()]
    assert leftovers == []
    assert received_versions(tmp_path / "receive" / MODEL) == []


def test_recover_rolls_committed_copies_forward_and_drops_the_rest(tmp_path: Path) -> None:
    model_dir = tmp_path / "receive" / MODEL
    for sub_model in ("entry", "ps_0"):
        (model_dir / sub_model / "1-temp").mkdir(parents=True)  # committed: marker written
        (model_dir / sub_model / "2-temp").mkdir(parents=True)  # not committed
    (model_dir / "ps_0" / "1").mkdir()  # ps_0 already renamed before the crash
    (model_dir / "ps_0" / "1-temp").rmdir()
    (model_dir / "1.staged").write_text("")
    assert received_versions(model_dir) == []  # the marker hides the half-renamed version
    VersionCopier(CopyConfig(tmp_path / "receive")).recover(MODEL)
    assert received_versions(model_dir) == [1]
    assert sorted(p.name for p in model_dir.rglob("*")) == ["1", "1", "entry", "ps_0"]


def test_a_version_with_fewer_ps_shards_is_received_once_and_its_folders_never_replaced(tmp_path: Path) -> None:
    # Version 1 has two PS shards, version 2 (resharded) one: the ps_1 folder of version 1 stays behind.
    p2p_version(tmp_path / "src", 1, num_ps=2)
    p2p_version(tmp_path / "src", 2, num_ps=1)
    fs = LocalFileSystem()
    candidates = {c.version: c for c in P2pSource(fs, str(tmp_path / "src"), MODEL).scan()}
    copier = VersionCopier(CopyConfig(tmp_path / "receive"))
    model_dir = tmp_path / "receive" / MODEL
    assert copier.copy(fs, candidates[1]) and copier.copy(fs, candidates[2])
    assert received_versions(model_dir) == [1, 2]
    assert received_versions(model_dir, num_ps=2) == [1]  # --num_ps 2: version 2 misses ps_1
    live = {sub_model: (model_dir / sub_model / "2").stat().st_ino for sub_model in ("entry", "ps_0")}
    assert copier.copy(fs, candidates[2]) is None  # received: not copied again
    assert {sub_model: (model_dir / sub_model / "2").stat().st_ino for sub_model in live} == live


def test_a_copy_keeps_sub_model_folders_already_received_complete(tmp_path: Path) -> None:
    p2p_version(tmp_path / "src", 1)
    fs = LocalFileSystem()
    [candidate] = P2pSource(fs, str(tmp_path / "src"), MODEL).scan()
    copier = VersionCopier(CopyConfig(tmp_path / "receive"))
    model_dir = tmp_path / "receive" / MODEL
    everything = copier.copy(fs, candidate)
    ps_0 = model_dir / "ps_0" / "1"
    shutil.rmtree(model_dir / "entry" / "1")  # e.g. a retention interrupted after the entry folder
    for path in (model_dir / "ps_1" / "1").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")  # ...and a PS folder left half-deleted: copied again
    kept = ps_0.stat().st_ino
    copied = copier.copy(fs, candidate)
    assert copied is not None and 0 < copied < (everything or 0)
    assert ps_0.stat().st_ino == kept  # complete: a replica may load from it, so it is never replaced
    assert received_versions(model_dir) == [1]
    source = tmp_path / "src" / f"{MODEL}@1" / MODEL / "ps_1" / "1"
    assert sorted(p.read_bytes() for p in (model_dir / "ps_1" / "1").rglob("*") if p.is_file()) == sorted(
        p.read_bytes() for p in source.rglob("*") if p.is_file()
    )


def test_rate_limit_sleeps_to_stay_under_the_rate(tmp_path: Path) -> None:
    p2p_version(tmp_path / "src", 1)
    [candidate] = P2pSource(LocalFileSystem(), str(tmp_path / "src"), MODEL).scan()
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    copier = VersionCopier(
        CopyConfig(tmp_path / "receive", rate_limit_bytes_per_s=1000), sleep=sleep, clock=lambda: now[0]
    )
    copied = copier.copy(LocalFileSystem(), candidate)
    assert copied is not None and copied > 1000
    assert now[0] == pytest.approx(copied / 1000)  # the copy took exactly as long as the rate allows


def test_stale_locks_of_dead_processes_are_removed(tmp_path: Path) -> None:
    fs: FileSystem = LocalFileSystem()
    (tmp_path / "m@1.read.lock").write_text(f"{socket.gethostname()} 1234\n")
    (tmp_path / "m@2.read.lock").write_text(f"{socket.gethostname()} 99\n")
    (tmp_path / "m@3.read.lock").write_text("other-host 1234\n")
    removed = remove_stale_locks(fs, str(tmp_path), alive=lambda pid: pid == 99)
    assert removed == [str(tmp_path / "m@1.read.lock")]


def test_retention_keeps_the_newest_and_everything_in_use(tmp_path: Path) -> None:
    assert versions_to_delete([1, 2, 3, 4, 5], keep=2, in_use=[1]) == [2, 3]
    model_dir = tmp_path / MODEL
    for version in (1, 2, 3, 4):
        export(model_dir, version)
    assert prune(model_dir, keep=2, in_use=None) == []  # unknown replica state: delete nothing
    assert prune(model_dir, keep=2, in_use={1}) == [2]
    assert list_versions(model_dir / "entry") == [1, 3, 4]
    assert list_versions(model_dir / "ps_1") == [1, 3, 4]
