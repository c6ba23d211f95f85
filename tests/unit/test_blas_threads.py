"""core.blas_threads and the servers' --blas_threads flag."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

import monolith_serving.cli as cli
import monolith_serving.ps.main as ps_main


def _blas_threads_after(threads: int) -> list[int]:
    # A fresh interpreter: the limit is process-wide and must not leak into the test process.
    code = (
        "import json, numpy; from monolith_serving.core.blas_threads import limit_blas_threads;"
        f"limit_blas_threads({threads});"
        "from threadpoolctl import threadpool_info;"
        "print(json.dumps([i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return list(json.loads(done.stdout))


def test_one_thread_caps_numpys_blas() -> None:
    default = _blas_threads_after(0)
    assert default, "numpy's BLAS was not found"
    assert _blas_threads_after(1) == [1] * len(default)


def test_a_negative_count_is_refused() -> None:
    from monolith_serving.core.blas_threads import limit_blas_threads

    with pytest.raises(ValueError, match="--blas_threads must be >= 0"):
        limit_blas_threads(-1)


def test_server_commands_apply_the_flag_before_running(monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[int] = []
    ran: list[argparse.Namespace] = []
    monkeypatch.setattr(cli, "limit_blas_threads", applied.append)
    monkeypatch.setattr(ps_main, "run", lambda args: ran.append(args) or 0)
    assert cli.main(["ps", "--blas_threads", "3"]) == 0
    assert applied == [3] and len(ran) == 1
    assert cli.main(["ps"]) == 0
    assert applied == [3, 1]  # servers default to one BLAS thread
