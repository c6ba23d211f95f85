"""A lean Predict load generator for the benchmarks: h2load (nghttp2's C HTTP/2 load generator).

The grpc.aio client of ``monolith_serving.client.profile`` spends ~0.15-0.4 ms of CPU per request on the same
2 cores as the servers it measures; h2load spends a few tens of microseconds. A gRPC unary call is an HTTP/2 POST of
one length-prefixed message, so h2load can send it as a fixed body (``-d``). Limits that follow:

- one body per run: every request of a run is the same PredictRequest (the grpc client cycles 32);
- the gRPC status travels in trailers under HTTP status 200, which h2load does not read, so a failed call
  looks like a success. Correctness is read from the server instead: ``CounterProbe`` reads a server's
  requests-by-code counter before and after the run and ``verified`` turns non-OK deltas (and OK replies
  missing from the server's count) into errors.

``run_h2load`` returns the same ``ProfileResult`` as ``run_profile`` (count, errors, mean/p50/p99 ms, QPS) over
the main duration; the warm-up's requests are not in it.
"""

from __future__ import annotations

import dataclasses
import re
import resource
import shutil
import struct
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from monolith_serving.client.profile import ProfileResult, summarize

PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"
_SUMMARY = re.compile(
    r"requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, (?P<succeeded>\d+) succeeded, "
    r"(?P<failed>\d+) failed, (?P<errored>\d+) errored, (?P<timeout>\d+) timeout"
)
# h2load's own exit is bounded by its duration; this only catches a wedged run.
_EXIT_GRACE_S = 60.0


class H2loadError(RuntimeError):
    """h2load is missing, failed, or printed something this module cannot read."""


def find_h2load() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise H2loadError("h2load not found (Debian package nghttp2-client): run make bench-deps")
    return path


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, the bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@dataclass(frozen=True)
class H2loadCounts:
    """h2load's own tally of the main duration (``failed`` includes ``errored`` and non-2xx replies)."""

    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int


@dataclass(frozen=True)
class H2loadRun:
    profile: ProfileResult
    counts: H2loadCounts
    client_cpu_s: float  # h2load's own user + system CPU, warm-up included


def parse_summary(stdout: str) -> H2loadCounts:
    match = _SUMMARY.search(stdout)
    if match is None:
        raise H2loadError(f"no 'requests:' summary in h2load output:\n{stdout}")
    n = {k: int(v) for k, v in match.groupdict().items()}
    return H2loadCounts(
        done=n["done"], succeeded=n["succeeded"], failed=n["failed"], errored=n["errored"], timeout=n["timeout"]
    )


def parse_log(text: str) -> tuple[list[float], int]:
    """(latencies in seconds of the 2xx replies, count of other rows) from h2load's ``--log-file``.

    Columns: start time (µs since epoch), HTTP status (-1 for a failed stream), µs to the end of the response;
    h2load may add columns later, so only the first three are read.
    """
    latencies_s: list[float] = []
    other = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise H2loadError(f"unexpected h2load log row {line!r}")
        if 200 <= int(fields[1]) < 300:
            latencies_s.append(int(fields[2]) / 1e6)
        else:
            other += 1
    return latencies_s, other


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def run_h2load(
    *,
    target: str,
    payload: bytes,
    in_flight: int,
    duration_s: float,
    warmup_s: float,
    path: str = PREDICT_PATH,
) -> H2loadRun:
    """Sends ``payload`` (a serialized request) to ``path`` on ``target`` (host:port, plaintext HTTP/2) with
    ``in_flight`` concurrent streams on one connection for ``warmup_s`` + ``duration_s``. Blocks; run it off
    an event loop that serves anything."""
    h2load = find_h2load()
    with tempfile.TemporaryDirectory(prefix="h2load-") as scratch:
        body = Path(scratch) / "body"
        body.write_bytes(grpc_frame(payload))
        # A fresh directory per run also means a fresh log: h2load appends to an existing file.
        log = Path(scratch) / "requests.log"
        command = [
            h2load,
            "--clients=1",
            "--threads=1",
            f"--max-concurrent-streams={in_flight}",
            f"--duration={_duration(duration_s)}",
            f"--data={body}",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            f"--log-file={log}",
        ]
        if warmup_s > 0:
            command.append(f"--warm-up-time={_duration(warmup_s)}")
        command.append(f"http://{target}{path}")
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=warmup_s + duration_s + _EXIT_GRACE_S, check=False
        )
        usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise H2loadError(f"h2load exited with {done.returncode}: {(done.stderr or done.stdout).strip()}")
        counts = parse_summary(done.stdout)
        if counts.done == 0:
            # h2load exits 0 even when it cannot connect at all.
            raise H2loadError(f"h2load completed no request to {target} (refused or no reply):\n{done.stdout}")
        latencies_s, non_2xx = parse_log(log.read_text() if log.exists() else "")
    errors = max(counts.failed, non_2xx)
    first_error = (
        f"h2load: {counts.failed} failed ({counts.errored} stream errors, {counts.timeout} timed out), "
        f"{non_2xx} logged without a 2xx status"
        if errors
        else ""
    )
    cpu_s = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    return H2loadRun(
        profile=summarize(latencies_s, errors, in_flight, duration_s, first_error),
        counts=counts,
        client_cpu_s=cpu_s,
    )


@dataclass(frozen=True)
class CounterProbe:
    """Reads one Prometheus counter of a server, summed by its ``code`` label (gRPC code name).

    ``metrics_url`` is the server's ``http://host:port/metrics``; ``sample`` the sample name with its suffix
    (``entry_predict_requests_total``). Other labels (model, method, ...) are summed over.
    """

    metrics_url: str
    sample: str

    def read(self) -> dict[str, float]:
        with urllib.request.urlopen(self.metrics_url, timeout=5.0) as response:
            text = response.read().decode()
        by_code: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == self.sample:
                    code = sample.labels.get("code", "")
                    by_code[code] = by_code.get(code, 0.0) + sample.value
        return by_code


def code_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Requests per gRPC code between two reads (codes with no new requests left out)."""
    deltas = {code: round(after[code] - before.get(code, 0.0)) for code in sorted(after)}
    return {code: n for code, n in deltas.items() if n}


def verified(result: ProfileResult, codes: dict[str, int]) -> ProfileResult:
    """``result`` with the server's view of errors added (h2load counts every HTTP 200 as a success).

    ``codes`` (``code_deltas`` of the server's counter) covers the warm-up too, so neither term is exact for the
    main duration: the replies h2load took for successes that the server did not count OK (a call failing
    before the handler, e.g. a malformed message, never reaches the counter) are at least ``count - OK``; the
    non-OK replies it counted may include warm-up ones. The larger of the two, capped at ``count``, is added.
    ``count`` and the latencies still include such failed calls: a row with errors measures failures.
    """
    non_ok = {code: n for code, n in codes.items() if code != "OK"}
    unseen = max(0, result.count - codes.get("OK", 0))
    added = min(result.count, max(sum(non_ok.values()), unseen))
    if not added:
        return result
    details = [f"{code} x{n}" for code, n in non_ok.items()]
    if unseen:
        details.append(f"{unseen} replies not counted OK by the server")
    first_error = result.first_error or f"server: {', '.join(details)}"
    return dataclasses.replace(result, errors=result.errors + added, first_error=first_error)
