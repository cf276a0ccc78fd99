"""Request traces in the Azure LLM inference schema, and splitting one across services.

The Azure Public Dataset's LLM traces (``benchmarks/traces/README.md``) are CSV files with a
header ``TIMESTAMP,ContextTokens,GeneratedTokens``: one row per request, its invocation time, its
prompt length and its output length. ``read_trace`` reads any file of that schema (gzip too, by
the ``.gz`` suffix) and assumes nothing about its shape: not its length, rate, or burstiness.

Serverless is about many models with sparse traffic, so ``split`` deals one trace's requests out
to ``n`` services with Zipf-like popularity (service k gets a share proportional to
``1 / (k + 1) ** s``), seeded: the head services stay busy, the tail ones see gaps long enough to
scale to zero. Each request is dealt on its own, so every service sees a thinned copy of the
trace's own bursts and lulls rather than a made-up arrival process.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TraceError(ValueError):
    """A trace file that is not in the Azure schema; says which file and row."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival: float  # seconds after the trace's first request
    prompt: int  # ContextTokens
    output: int  # GeneratedTokens


def _timestamp(text: str) -> datetime:
    # The dataset writes seven fractional digits ("2023-11-16 18:15:46.6805900"); datetime
    # takes at most six.
    head, _, frac = text.strip().partition(".")
    try:
        base = datetime.fromisoformat(head)
    except ValueError as e:
        raise TraceError(f"TIMESTAMP {text!r} is not a date and time") from e
    if frac:
        if not frac.isdigit():
            raise TraceError(f"TIMESTAMP {text!r} has a bad fraction of a second")
        base = base.replace(microsecond=int(frac[:6].ljust(6, "0")))
    return base


def parse_trace(lines: Iterable[str], name: str = "trace") -> list[TraceRequest]:
    """Requests from CSV text in the Azure schema, sorted by arrival, the first at 0."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header[:3]) != COLUMNS:
        raise TraceError(f"{name}: the header must start with {','.join(COLUMNS)}, not {header}")
    rows: list[tuple[datetime, int, int]] = []
    for number, row in enumerate(reader, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 3:
            raise TraceError(f"{name} row {number}: 3 columns expected, got {row}")
        try:
            prompt, output = int(row[1]), int(row[2])
            at = _timestamp(row[0])
        except (TraceError, ValueError) as e:
            raise TraceError(f"{name} row {number}: {e}") from e
        if prompt < 0 or output < 0:
            raise TraceError(f"{name} row {number}: negative token count in {row}")
        rows.append((at, prompt, output))
    if not rows:
        raise TraceError(f"{name}: no requests")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    return [TraceRequest((at - t0).total_seconds(), p, o) for at, p, o in rows]


def read_trace(path: Path) -> list[TraceRequest]:
    """A trace file in the Azure schema; ``.gz`` files are read through gzip."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TraceError(f"{path}: {e}") from e
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return parse_trace(io.StringIO(raw.decode("utf-8-sig")), str(path))


def zipf_weights(n: int, s: float) -> list[float]:
    """Service k's share of requests, proportional to ``1 / (k + 1) ** s``; sums to 1."""
    if n < 1:
        raise ValueError(f"at least one service, not {n}")
    raw = [1.0 / (k + 1) ** s for k in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


def split(
    trace: Sequence[TraceRequest], n: int, seed: int, s: float = 1.0
) -> list[list[TraceRequest]]:
    """Deal each request to one of ``n`` services, service k with probability ∝ 1/(k+1)**s.

    Deterministic for a seed; every request lands in exactly one service, in arrival order.
    """
    weights = zipf_weights(n, s)
    rng = random.Random(seed)
    services: list[list[TraceRequest]] = [[] for _ in range(n)]
    picks = rng.choices(range(n), weights=weights, k=len(trace))
    for req, k in zip(trace, picks, strict=True):
        services[k].append(req)
    return services


def window(
    trace: Sequence[TraceRequest], start_s: float, length_s: float, speedup: float = 1.0
) -> list[TraceRequest]:
    """The requests in ``[start_s, start_s + length_s)`` of the trace, re-timed from 0 and played
    ``speedup`` times faster (a time-compressed slice for a real-platform replay)."""
    if length_s <= 0 or speedup <= 0:
        raise ValueError("length_s and speedup must be positive")
    return [
        TraceRequest((r.arrival - start_s) / speedup, r.prompt, r.output)
        for r in trace
        if start_s <= r.arrival < start_s + length_s
    ]


def burstify(
    trace: Sequence[TraceRequest],
    seed: int,
    chunk_s: float = 60.0,
    mean_pause_s: float = 600.0,
    squeeze: float = 2.0,
) -> list[TraceRequest]:
    """A burstier trace made from a real one (SYNTHETIC; issue 24's check that a policy is not
    tuned to one trace's shape): the trace is cut into ``chunk_s`` slices, each slice is played
    ``squeeze`` times faster, and the slices follow one another with seeded exponential pauses
    (mean ``mean_pause_s``) between them. Every request, its tokens and its order within a
    slice are kept; only the time between slices changes, so the result has the same requests
    in bursts separated by memoryless silences, which no fixed keep-alive fits."""
    if chunk_s <= 0 or mean_pause_s < 0 or squeeze <= 0:
        raise ValueError("chunk_s and squeeze must be positive, mean_pause_s not negative")
    rng = random.Random(seed)
    out: list[TraceRequest] = []
    offset = 0.0
    chunk = -1
    for r in trace:
        k = int(r.arrival // chunk_s)
        while chunk < k:
            chunk += 1
            if chunk > 0:
                offset += chunk_s / squeeze + rng.expovariate(1.0 / mean_pause_s)
        at = offset + (r.arrival - chunk * chunk_s) / squeeze
        out.append(TraceRequest(at, r.prompt, r.output))
    return out


def write_trace(trace: Sequence[TraceRequest], path: Path, start: datetime) -> None:
    """The trace as a CSV in the Azure schema, its first request at ``start``."""
    from datetime import timedelta

    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in trace:
            at = start + timedelta(seconds=r.arrival)
            w.writerow([at.strftime("%Y-%m-%d %H:%M:%S.%f") + "0", r.prompt, r.output])
