"""Eagerly compiled numba kernels, shared by the PS index and the entry's request parser.

A kernel is compiled when its module is imported, for fixed signatures, so no request pays for compilation. numba
caches the machine code on disk where it finds a writable directory (beside the module, ``NUMBA_CACHE_DIR`` or the
user's cache directory); on a read-only root filesystem with no home it compiles in memory instead, which costs
about a second per process start rather than failing the import. Kernels release the GIL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba  # type: ignore[import-untyped,unused-ignore]


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
