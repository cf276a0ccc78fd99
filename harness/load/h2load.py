"""Fixed-rate HTTP/1.1 load with ``h2load`` (Debian package ``nghttp2-client``).

``RATE_CONNECTIONS`` connections send a fixed number of requests a second in all, whatever the
answers do; latencies come from h2load's ``--log-file`` (per request: start time, status,
microseconds to the end of the response). Each connection's request clock starts when it
connects; connected all at once (h2load's ``-D`` duration mode) the connections fire in step, a
burst every ``connections / rate`` seconds, and the percentiles then measure bursts. So a run
uses ``-n`` (rate x duration requests) with connections opened a few per millisecond (``-r``,
``--rate-period``), which spreads their phases evenly over one period. A request due while its
connection still waits for the previous answer is sent when that answer arrives and timed from
then, so a run whose achieved rate falls short of its target is past saturation and its
latencies understate. Requests started in the first ``RATE_TRIM_S`` are left out (connections
being opened).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RATE_CONNECTIONS = 64
RATE_TRIM_S = 0.25  # fixed-rate requests started this soon after the first are left out


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def h2load(url: str, total_rps: float, duration_s: float) -> dict[str, float]:
    """Fixed-rate load: ``RATE_CONNECTIONS`` HTTP/1.1 connections, ``total_rps`` req/s in all.

    See this module's doc for why connections are opened a few per millisecond (``-r`` with a
    ``--rate-period`` of whole milliseconds) rather than all at once.
    """
    connections = RATE_CONNECTIONS
    if total_rps / connections > 100:
        # h2load's per-connection request timer ticks at most every 10 ms; faster than that, it
        # sends several requests per tick back to back.
        print(
            f"  h2load: {total_rps:g} req/s over {connections} connections is bursty",
            file=sys.stderr,
        )
    if total_rps >= 1000:
        per_period, period_ms = math.ceil(total_rps / 1000), 1
    else:
        per_period, period_ms = 1, max(1, round(1000 / total_rps))
    requests = max(connections, round(total_rps * duration_s))
    with tempfile.TemporaryDirectory(prefix="torpor-h2load-") as tmp:
        log_file = Path(tmp) / "requests.tsv"
        out = subprocess.run(
            [
                "h2load", "--h1",
                f"--clients={connections}",
                f"--requests={requests}",
                f"--rps={total_rps / connections:.6g}",
                f"--rate={per_period}",
                f"--rate-period={period_ms}ms",
                f"--log-file={log_file}",
                url,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout  # fmt: skip
        lines = log_file.read_text().splitlines()
    entries = [(int(start), int(status), int(us)) for start, status, us in
               (line.split("\t")[:3] for line in lines)]  # fmt: skip
    first = min((start for start, _, _ in entries), default=0)
    kept = [e for e in entries if e[0] >= first + RATE_TRIM_S * 1e6]
    latencies = sorted(us / 1e3 for _, status, us in kept if 200 <= status < 300)
    finished = re.search(r"finished in \S+, ([\d.]+) req/s", out)
    if not latencies or finished is None:
        raise RuntimeError(f"h2load measured nothing at {url}:\n{out}")
    return {
        "target_rps": total_rps,
        "achieved_rps": float(finished.group(1)),
        "requests": float(len(kept)),
        "failed": float(sum(1 for _, status, _ in entries if not 200 <= status < 300)),
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
    }
