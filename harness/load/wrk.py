"""Closed-loop HTTP load with ``wrk`` (Debian package ``wrk``), its percentiles parsed.

``wrk -t1 -c N --latency``: each of N connections sends its next request when the last answer
arrives, so the rate is whatever the slowest hop allows: a throughput figure.
"""

from __future__ import annotations

import re
import subprocess
import sys

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, connections: int, duration_s: float) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m is None:
            raise RuntimeError(f"no p{pct} in wrk output:\n{out}")
        result[f"p{pct}_ms"] = _ms(m.group(1))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    result["rps"] = float(rps.group(1)) if rps else 0.0
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    if socket_errors:
        print(f"  wrk socket errors at {url}: {socket_errors.group(1)}", file=sys.stderr)
    return result
