#!/usr/bin/env python3
"""Hash-table dump read speed: read_dump on one N-row file vs an in-memory numpy floor, printed as JSON.

The floor reads the same file into memory and copies ids and floats out through a structured
``np.frombuffer`` view that assumes the known record layout (no CRC, no layout checks): no decoder can
beat it by much from Python. Each measurement is the best of ``--repeat`` runs (this machine is shared).

Usage: python bench/dump_read.py [--rows 1000000] [--dim 32] [--repeat 3] [--no-crc]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from monolith_serving.core.hash_table_dump import format_dump_filename, read_dump, write_dump

TS = 1_700_000_000  # a realistic last_update_ts_sec (5-byte varint), as real dumps carry


def floor_read(path: Path, dim: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    # Record: u64 len | u32 crc | 0x09 id(8) | dim x (0x15 f32) | 0x20 varint(5) | u32 crc
    cell = np.dtype({"names": ["v"], "formats": ["<f4"], "offsets": [1], "itemsize": 5})  # tag byte + float
    record = np.dtype(
        {
            "names": ["id", "num"],
            "formats": ["<i8", (cell, dim)],
            "offsets": [13, 21],
            "itemsize": 16 + 9 + 5 * dim + 6,
        }
    )
    rows = np.frombuffer(path.read_bytes(), dtype=record)
    return rows["id"].copy(), rows["num"]["v"].copy()


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-crc", action="store_true", help="read with verify_crc=False")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1 << 62, size=args.rows, dtype=np.int64)
    values = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="dump_read_") as tmp:
        path = Path(tmp) / format_dump_filename("bench", 0, 0, 1)
        start = time.perf_counter()
        write_dump(path, ids, values, TS)
        write_s = time.perf_counter() - start

        got_ids, got_values = read_dump([path], verify_crc=not args.no_crc)
        floor_ids, floor_values = floor_read(path, args.dim)
        if not (np.array_equal(got_ids, ids) and np.array_equal(got_values, values)):
            raise SystemExit("read_dump returned different rows than were written")
        if not (np.array_equal(floor_ids, ids) and np.array_equal(floor_values, values)):
            raise SystemExit("floor decoder is wrong (layout assumption broken)")
        del got_ids, got_values, floor_ids, floor_values

        seconds = best_of(args.repeat, lambda: read_dump([path], verify_crc=not args.no_crc))
        floor_s = best_of(args.repeat, lambda: floor_read(path, args.dim))
        size = path.stat().st_size
    print(
        json.dumps(
            {
                "rows": args.rows,
                "dim": args.dim,
                "file_bytes": size,
                "verify_crc": not args.no_crc,
                "seconds": round(seconds, 4),
                "rows_per_s": round(args.rows / seconds),
                "floor_seconds": round(floor_s, 4),
                "floor_rows_per_s": round(args.rows / floor_s),
                "vs_floor": round(floor_s / seconds, 3),
                "write_seconds": round(write_s, 4),
                "write_rows_per_s": round(args.rows / write_s),
            }
        )
    )


if __name__ == "__main__":
    main()
