"""Seeding numba's cache directory from the image's build-time copy (core.compiled)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from monolith_serving.core.compiled import SEED_ENV, seed_cache_dir, seed_numba_cache


def make_seed(root: Path) -> Path:
    seed = root / "seed"
    for folder, files in {"entry_abc": ("k.nbi", "k.1.nbc"), "ps_def": ("h.nbi", "h.1.nbc", "h.2.nbc")}.items():
        (seed / folder).mkdir(parents=True)
        for name in files:
            (seed / folder / name).write_bytes(f"{folder}/{name}".encode())
    return seed


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_copies_every_folder_into_a_missing_target(tmp_path: Path) -> None:
    seed = make_seed(tmp_path)
    target = tmp_path / "cache"
    assert seed_cache_dir(seed, target) == ["entry_abc", "ps_def"]
    assert tree(target) == tree(seed)
    assert sorted(p.name for p in target.iterdir()) == ["entry_abc", "ps_def"]  # no staging folder left


def test_leaves_folders_already_there_alone_and_fills_the_others(tmp_path: Path) -> None:
    seed = make_seed(tmp_path)
    target = tmp_path / "cache"
    (target / "entry_abc").mkdir(parents=True)
    (target / "entry_abc" / "k.nbi").write_bytes(b"compiled here")
    assert seed_cache_dir(seed, target) == ["ps_def"]
    assert (target / "entry_abc" / "k.nbi").read_bytes() == b"compiled here"
    assert not (target / "entry_abc" / "k.1.nbc").exists()
    assert seed_cache_dir(seed, target) == []  # idempotent


def test_no_seed_is_a_no_op(tmp_path: Path) -> None:
    assert seed_cache_dir(tmp_path / "absent", tmp_path / "cache") == []
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_target_path_is_logged_not_raised(tmp_path: Path) -> None:
    seed = make_seed(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert seed_cache_dir(seed, blocker / "cache") == []  # mkdir fails: NotADirectoryError, an OSError


def _seed_in_child(seed: str, target: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(seed_cache_dir(Path(seed), Path(target)))


def test_processes_seeding_at_once_install_each_folder_once_and_whole(tmp_path: Path) -> None:
    seed = make_seed(tmp_path)
    target = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    children = [context.Process(target=_seed_in_child, args=(str(seed), str(target), results)) for _ in range(4)]
    for child in children:
        child.start()
    installed = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(60)
    # Each folder installed by exactly one process; the result is the seed, with no staging folder left over.
    assert sorted(name for names in installed for name in names) == ["entry_abc", "ps_def"]
    assert tree(target) == tree(seed)
    assert sorted(p.name for p in target.iterdir()) == ["entry_abc", "ps_def"]


def test_environment_names_seed_and_target(tmp_path: Path) -> None:
    seed = make_seed(tmp_path)
    target = tmp_path / "cache"
    assert seed_numba_cache({SEED_ENV: str(seed)}) == []  # no NUMBA_CACHE_DIR: numba's own default
    assert seed_numba_cache({"NUMBA_CACHE_DIR": str(target)}) == []  # no seed: nothing to copy
    assert seed_numba_cache({SEED_ENV: str(seed), "NUMBA_CACHE_DIR": str(seed)}) == []  # the build step: all there
    assert seed_numba_cache({SEED_ENV: str(seed), "NUMBA_CACHE_DIR": str(target)}) == ["entry_abc", "ps_def"]
