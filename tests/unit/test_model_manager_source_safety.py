"""Whoever writes into a source must not reach outside it (regressions of a security audit): object keys with
``..``, empty or ``.`` segments (fsspec ``memory://``, as S3/GCS/HDFS keys may hold them), symbolic links in
and around a local version, a symlink loop, an unreadable version, and a serving spec's huge ``num_ps``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

import fsspec
import pytest
from model_manager_fakes import FakeClock, FakeCluster, fake_coordinator

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.model_manager.fs import (
    FileInfo,
    FileSystem,
    LocalFileSystem,
    UnsafeEntryError,
    open_filesystem,
    unsafe_reason,
)
from monolith_serving.model_manager.manager import ManagedModel, ManagerConfig, ModelManager
from monolith_serving.model_manager.metrics import ModelManagerMetrics
from monolith_serving.model_manager.p2p_copy import CopyConfig, VersionCopier, received_versions
from monolith_serving.model_manager.rollout import ModelState, ModelTarget
from monolith_serving.model_manager.sources import (
    DONE_SUFFIX,
    MAX_NUM_PS,
    ExportBaseSource,
    P2pSource,
    VersionSource,
    expected_sub_models,
    read_entry_spec,
)

MODEL = "demo"
SOURCES = "monolith_serving.model_manager.sources"


def export(out: Path, version: int, num_ps: int = 1) -> None:
    write_demo(DemoOptions(out=out, num_ps=num_ps, rows=10, version=version, files_per_partition=1))


def p2p_version(src: Path, version: int, num_ps: int = 1) -> Path:
    """``{src}/{model}@{version}/{model}`` with its done marker."""
    folder = src / f"{MODEL}@{version}" / MODEL
    export(folder, version, num_ps)
    (src / f"{MODEL}@{version}{DONE_SUFFIX}").write_text("")
    return folder


def memory_p2p(tmp_path: Path, versions: list[int]) -> tuple[FileSystem, str]:
    """A p2p folder on fsspec's memory file system (a fresh root per test: that store is process-wide)."""
    fs, root = open_filesystem(f"memory://p2p-{uuid.uuid4().hex}")
    for version in versions:
        publish_memory(tmp_path, root, version)
    return fs, root


def publish_memory(tmp_path: Path, root: str, version: int) -> None:
    local = tmp_path / "build"
    p2p_version(local, version)
    memory = fsspec.filesystem("memory")
    for info in LocalFileSystem().walk_files(str(local / f"{MODEL}@{version}")):
        memory.pipe_file(f"{root}/{MODEL}@{version}/{info.name}", Path(info.path).read_bytes())
    memory.pipe_file(f"{root}/{MODEL}@{version}{DONE_SUFFIX}", b"")


def escaping_key(tmp_path: Path) -> str:
    """A key below ``entry/{v}/assets/`` whose ``..`` segments climb from the receive folder to ``outside``."""
    return "../" * 40 + str(tmp_path / "outside" / "pwned.txt").lstrip("/")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def set_num_ps(entry_version: Path, num_ps: int) -> None:
    spec_path = entry_version / "serving_spec.json"
    spec = json.loads(spec_path.read_text())
    spec["num_ps"] = num_ps
    spec_path.write_text(json.dumps(spec))


def refusals(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SOURCES and text in r.getMessage()]


# ---------------------------------------------------------------- names that lead out of the version


@pytest.mark.timeout(60)  # the empty segment made the old walk list a folder inside itself, forever
@pytest.mark.parametrize("kind", ["dotdot", "empty", "dot"])
def test_a_key_with_dot_dot_empty_or_dot_segments_refuses_only_its_version(tmp_path: Path, kind: str) -> None:
    fs, root = memory_p2p(tmp_path, [1, 2, 3])
    bad = {"dotdot": escaping_key(tmp_path), "empty": "/pwned.txt", "dot": "./pwned.txt"}[kind]
    fsspec.filesystem("memory").pipe_file(f"{root}/{MODEL}@2/{MODEL}/entry/2/assets/{bad}", b"from the source\n")
    candidates = {c.version: c for c in P2pSource(fs, root, MODEL).scan()}
    assert sorted(candidates) == [1, 2, 3]  # listed: the copier refuses it, where refusals are counted
    receive = tmp_path / "receive"
    copier = VersionCopier(CopyConfig(receive))

    with pytest.raises(UnsafeEntryError, match=r"demo version 2 entry: refused, the entry 'assets/[^']*'"):
        copier.copy(fs, candidates[2])
    assert not (tmp_path / "outside").exists()
    assert files_under(receive) == []  # refused before the first byte: not even a temp folder's file
    assert not fs.exists(candidates[2].lock_path or "")  # the read lock is released
    assert copier.copy(fs, candidates[1]) and copier.copy(fs, candidates[3])
    assert received_versions(receive / MODEL) == [1, 3]
    assert {p.relative_to(tmp_path).parts[0] for p in files_under(tmp_path)} == {"build", "receive"}


@pytest.mark.parametrize(
    ("name", "unsafe"),
    [
        ("assets/table-0", False),
        ("a/b/c", False),
        ("", True),
        ("/etc/passwd", True),
        ("../x", True),
        ("assets/../../x", True),
        ("assets//x", True),
        ("assets/./x", True),
        ("assets/.", True),
        ("x\x00y", True),
    ],
)
def test_unsafe_names(name: str, unsafe: bool) -> None:
    assert (unsafe_reason(FileInfo(name, "/src/" + name, False, 1, 0.0)) is not None) == unsafe


def test_a_destination_outside_the_temp_folder_is_refused_even_if_names_were_not_checked(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x").write_text("x")
    temp = tmp_path / "receive" / "1-temp"
    temp.mkdir(parents=True)
    escaping = FileInfo("../../outside", str(tmp_path / "src" / "x"), False, 1, 0.0)
    with pytest.raises(UnsafeEntryError, match="would land outside"):
        VersionCopier(CopyConfig(tmp_path / "receive"))._copy_tree(LocalFileSystem(), [escaping], temp, 0.0, 0)
    assert not (tmp_path / "outside").exists()


def make_manager(tmp_path: Path, source: VersionSource) -> tuple[ModelManager, ManagedModel, ModelManagerMetrics]:
    receive = tmp_path / "receive"
    clock = FakeClock()
    metrics = ModelManagerMetrics()
    model = ManagedModel(
        source=source, state=ModelState(ModelTarget(MODEL, str(receive / MODEL), 0)), num_ps_fixed=False
    )
    manager = ModelManager(
        models=[model],
        coordinator=fake_coordinator(FakeCluster(num_ps=1, base_dir=str(receive / MODEL)), clock, metrics),
        copier=VersionCopier(CopyConfig(receive)),
        config=ManagerConfig(),
        metrics=metrics,
        wall=clock,
        clock=clock,
    )
    return manager, model, metrics


def test_the_control_loop_counts_the_refusal_as_a_failed_copy_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fs, root = memory_p2p(tmp_path, [1])
    manager, model, metrics = make_manager(tmp_path, P2pSource(fs, root, MODEL))

    def copies(outcome: str) -> float:
        value = metrics.registry.get_sample_value(
            "monolith_model_manager_copies_total", {"model": MODEL, "outcome": outcome}
        )
        return value or 0.0

    async def scenario() -> None:
        await manager.step()
        assert model.state.serving == 1
        publish_memory(tmp_path, root, 2)
        fsspec.filesystem("memory").pipe_file(
            f"{root}/{MODEL}@2/{MODEL}/entry/2/assets/{escaping_key(tmp_path)}", b"from the source\n"
        )
        with caplog.at_level(logging.ERROR):
            await manager.step()
        assert copies("error") == 1 and model.state.serving == 1
        assert any("demo version 2 not received" in r.getMessage() and "'assets/..'" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        publish_memory(tmp_path, root, 3)
        await manager.step()
        assert model.state.serving == 3 and copies("ok") == 2

    asyncio.run(scenario())
    assert not (tmp_path / "outside").exists()
    assert received_versions(tmp_path / "receive" / MODEL) == [1, 3]


# ---------------------------------------------------------------- symbolic links


def secrets(tmp_path: Path) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "id_rsa").write_text("PRIVATE KEY\n")
    return folder


@pytest.mark.parametrize("link", ["folder", "file"])
def test_a_symlink_inside_a_local_version_refuses_it_and_copies_no_secret(tmp_path: Path, link: str) -> None:
    secret = secrets(tmp_path)
    src = tmp_path / "p2p"
    p2p_version(src, 1)
    version = p2p_version(src, 2)
    if link == "folder":
        (version / "ps_0" / "2" / "more_assets").symlink_to(secret)
    else:
        (version / "entry" / "2" / "assets").mkdir(exist_ok=True)
        (version / "entry" / "2" / "assets" / "key").symlink_to(secret / "id_rsa")
    fs = LocalFileSystem()
    candidates = {c.version: c for c in P2pSource(fs, str(src), MODEL).scan()}
    assert sorted(candidates) == [1, 2]
    receive = tmp_path / "receive"
    copier = VersionCopier(CopyConfig(receive))

    with pytest.raises(UnsafeEntryError, match="demo version 2 .*is a symbolic link"):
        copier.copy(fs, candidates[2])
    assert files_under(receive) == []
    assert copier.copy(fs, candidates[1])
    assert received_versions(receive / MODEL) == [1]
    assert not any(b"PRIVATE KEY" in p.read_bytes() for p in files_under(receive))


def test_a_symlink_loop_leaves_the_scan_working(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for version in (1, 2, 3):
        export(tmp_path / "base", version)
    (tmp_path / "base" / "ps_0" / "2" / "l1").symlink_to(".")
    source = ExportBaseSource(LocalFileSystem(), str(tmp_path / "base"), MODEL, settle_scans=0)  # served in place
    with caplog.at_level(logging.ERROR):
        assert [c.version for c in source.scan()] == [1, 3]
        assert [c.version for c in source.scan()] == [1, 3]
    [refused] = refusals(caplog, "version 2 refused")  # logged once, not at every scan
    assert "'l1'" in refused and "symbolic link" in refused

    src = tmp_path / "p2p"
    for version in (1, 2, 3):
        p2p_version(src, version)
    (src / f"{MODEL}@2" / MODEL / "entry" / "2" / "l1").symlink_to(".")
    candidates = {c.version: c for c in P2pSource(LocalFileSystem(), str(src), MODEL).scan()}
    assert sorted(candidates) == [1, 2, 3]
    copier = VersionCopier(CopyConfig(tmp_path / "receive"))
    with pytest.raises(UnsafeEntryError, match="'l1'"):
        copier.copy(LocalFileSystem(), candidates[2])
    assert copier.copy(LocalFileSystem(), candidates[3])


def test_symlinked_version_folders_are_refused_but_a_symlinked_base_path_is_fine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    real = tmp_path / "real"
    export(real, 1)
    export(tmp_path / "elsewhere", 2)
    for sub_model in ("entry", "ps_0"):
        (real / sub_model / "2").symlink_to(tmp_path / "elsewhere" / sub_model / "2")
    (tmp_path / "mount").symlink_to(real)  # an operator's mount: the base path itself may be a link
    source = ExportBaseSource(LocalFileSystem(), str(tmp_path / "mount"), MODEL, settle_scans=0)
    with caplog.at_level(logging.ERROR):
        assert [c.version for c in source.scan()] == [1]
    [refused] = refusals(caplog, "version 2 refused")
    assert "version folder" in refused and "symbolic link" in refused

    src = tmp_path / "p2p"
    p2p_version(src, 1)
    p2p_version(tmp_path / "staging", 2)
    (src / f"{MODEL}@2").symlink_to(tmp_path / "staging" / f"{MODEL}@2")
    (src / f"{MODEL}@2{DONE_SUFFIX}").write_text("")
    p2p_version(tmp_path / "staging", 3)
    (src / f"{MODEL}@3" / MODEL).mkdir(parents=True)
    (src / f"{MODEL}@3" / MODEL / "entry").symlink_to(tmp_path / "staging" / f"{MODEL}@3" / MODEL / "entry")
    (src / f"{MODEL}@3" / MODEL / "ps_0").symlink_to(tmp_path / "staging" / f"{MODEL}@3" / MODEL / "ps_0")
    (src / f"{MODEL}@3{DONE_SUFFIX}").write_text("")
    (tmp_path / "p2p_mount").symlink_to(src)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert [c.version for c in P2pSource(LocalFileSystem(), str(tmp_path / "p2p_mount"), MODEL).scan()] == [1]
    assert len(refusals(caplog, "version 2 refused")) == len(refusals(caplog, "version 3 refused")) == 1


def test_a_symlinked_serving_spec_refuses_its_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    export(tmp_path / "base", 1)
    export(tmp_path / "base", 2)
    spec = tmp_path / "base" / "entry" / "2" / "serving_spec.json"
    spec.rename(tmp_path / "elsewhere.json")
    spec.symlink_to(tmp_path / "elsewhere.json")
    source = ExportBaseSource(LocalFileSystem(), str(tmp_path / "base"), MODEL, settle_scans=0, needs_copy=True)
    with caplog.at_level(logging.ERROR):
        assert [c.version for c in source.scan()] == [1]
    [refused] = refusals(caplog, "version 2 refused")
    assert "serving_spec.json is a symbolic link" in refused


class UnreadableVersion(LocalFileSystem):
    """Local files, but listing one folder fails as a folder without permission would (tests run as root)."""

    def __init__(self, broken: Path) -> None:
        self.broken = str(broken)

    def ls(self, path: str) -> list[FileInfo]:
        if path == self.broken:
            raise PermissionError(13, "Permission denied", path)
        return super().ls(path)


def test_an_unreadable_version_is_skipped_and_the_others_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for version in (1, 2, 3):
        export(tmp_path, version)
    source = ExportBaseSource(UnreadableVersion(tmp_path / "ps_0" / "2"), str(tmp_path), MODEL, settle_scans=0)
    with caplog.at_level(logging.WARNING):
        assert [c.version for c in source.scan()] == [1, 3]
        assert [c.version for c in source.scan()] == [1, 3]
    [skipped] = refusals(caplog, "version 2 skipped")
    assert "Permission denied" in skipped


# ---------------------------------------------------------------- num_ps


def test_a_huge_num_ps_refuses_the_version_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for version in (1, 2, 3):
        export(tmp_path / "base", version)
    set_num_ps(tmp_path / "base" / "entry" / "2", 10**12)
    src = tmp_path / "p2p"
    for version in (1, 2, 3):
        p2p_version(src, version)
    set_num_ps(src / f"{MODEL}@2" / MODEL / "entry" / "2", 10**12)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        base = ExportBaseSource(LocalFileSystem(), str(tmp_path / "base"), MODEL, settle_scans=0)
        assert [c.version for c in base.scan()] == [1, 3]
        assert [c.version for c in P2pSource(LocalFileSystem(), str(src), MODEL).scan()] == [1, 3]
    assert time.monotonic() - started < 5
    refused = refusals(caplog, "version 2 refused")
    assert len(refused) == 2 and all(f"num_ps 1000000000000 is above the maximum of {MAX_NUM_PS}" in m for m in refused)


def test_a_received_version_with_a_huge_num_ps_does_not_count(tmp_path: Path) -> None:
    model_dir = tmp_path / "receive" / MODEL
    export(model_dir, 1)
    export(model_dir, 2)
    set_num_ps(model_dir / "entry" / "2", 10**12)
    started = time.monotonic()
    assert received_versions(model_dir) == [1]
    assert time.monotonic() - started < 5


def spec_num_ps(fs: LocalFileSystem, entry_version_path: str) -> int | None:
    return read_entry_spec(fs, entry_version_path).num_ps()


def test_num_ps_bounds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    export(tmp_path, 1)
    set_num_ps(tmp_path / "entry" / "1", MAX_NUM_PS)
    assert spec_num_ps(LocalFileSystem(), str(tmp_path / "entry" / "1")) == MAX_NUM_PS
    assert len(expected_sub_models(MAX_NUM_PS)) == MAX_NUM_PS + 1
    with caplog.at_level(logging.DEBUG):
        # MAX_NUM_PS shards with only ps_0 present: incomplete (a trainer may still write them), not refused.
        assert ExportBaseSource(LocalFileSystem(), str(tmp_path), MODEL, settle_scans=0).scan() == []
    assert refusals(caplog, "refused") == []
    set_num_ps(tmp_path / "entry" / "1", MAX_NUM_PS + 1)
    with pytest.raises(InvalidArgumentError, match="serving_spec.json: num_ps 65537 is above the maximum"):
        spec_num_ps(LocalFileSystem(), str(tmp_path / "entry" / "1"))
    with pytest.raises(InvalidArgumentError, match="above the maximum"):
        expected_sub_models(10**12)
