"""The p2p copy is all-or-nothing: a real ``model-manager copy`` process killed with SIGKILL midway leaves no
version visible in the receive folder, and the next run cleans up and completes it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.export_layout import list_versions
from monolith_serving.model_manager.p2p_copy import received_versions

pytestmark = pytest.mark.integration

MODEL = "demo"
VERSION = 1700000000


def copy_command(src: Path, receive: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "monolith_serving", "model-manager", "copy", f"--model={MODEL}",
        f"--p2p_source={src}", f"--receive_dir={receive}", *extra,
    ]  # fmt: skip


def test_a_copy_killed_midway_leaves_no_partial_version(tmp_path: Path) -> None:
    src = tmp_path / "p2p"
    write_demo(DemoOptions(out=src / f"{MODEL}@{VERSION}" / MODEL, num_ps=2, rows=1500, version=VERSION))
    (src / f"{MODEL}@{VERSION}.write.done").write_text("")
    receive = tmp_path / "receive"
    lock = src / f"{MODEL}@{VERSION}.read.lock"
    # ~1.3 MB at 200 kB/s: several seconds, so the kill lands in the middle of the copy.
    copier = subprocess.Popen(copy_command(src, receive, "--copy_rate_limit_bytes_per_s=200000"))
    deadline = time.monotonic() + 30
    while not list(receive.glob(f"{MODEL}/ps_1/{VERSION}-temp/assets/*")):
        assert copier.poll() is None, "copy finished before it could be interrupted"
        assert time.monotonic() < deadline, "the copy never started"
        time.sleep(0.02)
    assert lock.exists()  # held while reading the source
    copier.kill()
    copier.wait()

    model_dir = receive / MODEL
    assert received_versions(model_dir) == []
    for sub_model in ("entry", "ps_0", "ps_1"):
        if (model_dir / sub_model).exists():
            assert list_versions(model_dir / sub_model) == [], sub_model  # only -temp folders, never a version
    assert any(p.is_file() for p in model_dir.rglob("*-temp/**/*"))  # it really died midway

    done = subprocess.run(copy_command(src, receive), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert received_versions(model_dir) == [VERSION]
    assert not list(model_dir.glob("*/*-temp")) and not list(model_dir.glob("*.staged"))
    assert not lock.exists()
    for sub_model in ("entry", "ps_0", "ps_1"):
        original = src / f"{MODEL}@{VERSION}" / MODEL / sub_model / str(VERSION)
        assert tree(model_dir / sub_model / str(VERSION)) == tree(original), sub_model


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_copy_refuses_a_version_holding_a_symlink_and_copies_no_secret(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "id_rsa").write_text("PRIVATE KEY\n")
    src = tmp_path / "p2p"
    version_dir = src / f"{MODEL}@{VERSION}" / MODEL
    write_demo(DemoOptions(out=version_dir, num_ps=2, rows=10, version=VERSION))
    (version_dir / "ps_1" / str(VERSION) / "assets" / "more").symlink_to(secrets)
    (src / f"{MODEL}@{VERSION}.write.done").write_text("")
    receive = tmp_path / "receive"

    refused = subprocess.run(copy_command(src, receive), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "'assets/more'" in refused.stderr and "symbolic link" in refused.stderr
    assert received_versions(receive / MODEL) == []
    assert not [p for p in receive.rglob("*") if p.is_file()]
    assert not (src / f"{MODEL}@{VERSION}.read.lock").exists()
