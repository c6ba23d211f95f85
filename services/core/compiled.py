"""Eagerly compiled numba kernels, shared by the PS index and the entry's request parser.

A kernel is compiled when its module is imported, for fixed signatures, so no request pays for compilation. numba
caches the machine code on disk where it finds a writable directory (beside the module, ``NUMBA_CACHE_DIR`` or the
user's cache directory); with none (a read-only root filesystem and no home) it compiles in memory instead, which
costs several seconds per process start (13 s on a slow 2-core machine) rather than failing the import.

The image compiles its kernels at build time into a read-only directory and names it in
``MONOLITH_NUMBA_CACHE_SEED``. numba only uses a cache directory it can write to, so the first import in a
container copies that seed into ``NUMBA_CACHE_DIR`` (an emptyDir ``/tmp`` under Helm's read-only root
filesystem) and loads from there instead of compiling. Kernels release the GIL.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numba  # type: ignore[import-untyped,unused-ignore]

__all__ = ["SEED_ENV", "kernel", "seed_cache_dir", "seed_numba_cache"]

log = logging.getLogger(__name__)

SEED_ENV = "MONOLITH_NUMBA_CACHE_SEED"


def seed_cache_dir(seed: Path, target: Path) -> list[str]:
    """Copies each top-level folder of ``seed`` (numba keeps one per source folder) that ``target`` lacks.

    Each folder is copied beside its place and renamed into it, so a process importing at the same time sees
    a whole folder or none, and of two processes seeding at once one wins and the other drops its copy.
    Returns the folders installed. Best effort: a folder that cannot be copied is logged and left to numba,
    which then compiles.
    """
    try:
        names = sorted(p.name for p in seed.iterdir() if p.is_dir())
    except OSError:
        return []  # no seed (a development checkout): numba compiles and caches as usual
    installed = []
    for name in names:
        final = target / name
        if final.exists():
            continue
        staging: Path | None = None
        try:
            target.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target))
            shutil.copytree(seed / name, staging, dirs_exist_ok=True)
            staging.rename(final)
        except OSError as error:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if not final.exists():  # else another process (or numba itself) put it there first
                log.warning("numba cache seed %s not copied to %s: %s (kernels compile)", seed / name, target, error)
            continue
        installed.append(name)
    return installed


def seed_numba_cache(environ: Mapping[str, str]) -> list[str]:
    """``seed_cache_dir`` from ``MONOLITH_NUMBA_CACHE_SEED`` into ``NUMBA_CACHE_DIR`` when both are set."""
    seed, target = environ.get(SEED_ENV), environ.get("NUMBA_CACHE_DIR")
    if not seed or not target:
        return []
    return seed_cache_dir(Path(seed), Path(target))


# Before any kernel below is compiled: the cache must be in place when numba looks for it.
seed_numba_cache(os.environ)


def kernel(signatures: list[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``function`` compiled now for ``signatures`` (nogil, no bounds checks)."""

    def compile_eagerly(function: Callable[..., Any]) -> Callable[..., Any]:
        try:
            compiled: Callable[..., Any] = numba.njit(signatures, nogil=True, cache=True, boundscheck=False)(function)
        except RuntimeError:
            # No writable cache directory: compile in memory.
            compiled = numba.njit(signatures, nogil=True, cache=False, boundscheck=False)(function)
        return compiled

    return compile_eagerly
