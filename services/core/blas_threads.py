"""How many threads numpy's BLAS (OpenBLAS in numpy's wheels) may use in a server process.

The servers run their matrix products on the event-loop thread, next to gRPC's threads and, on small hosts, next
to other servers. Left at its default, OpenBLAS starts one worker per core for any product above a small size
and keeps the workers spinning between products: at batch 256 on a 2-core machine one of them held a whole
core, and the entry served 705 Predicts/s where it serves 1093 with one thread (bench/predict.py, batch 256,
16 in flight). So servers use one BLAS thread unless told otherwise (``--blas_threads``).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def limit_blas_threads(threads: int) -> None:
    """Caps the BLAS libraries loaded in this process at ``threads`` each; 0 leaves their own default."""
    if threads < 0:
        raise ValueError(f"--blas_threads must be >= 0, got {threads}")
    if threads == 0:
        return
    import numpy  # noqa: F401  (loads numpy's BLAS, so that the limit finds it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    log.debug("BLAS limited to %d thread(s)", threads)
