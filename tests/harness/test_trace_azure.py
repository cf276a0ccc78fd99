"""The Azure trace reader and the Zipf splitter."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from harness.trace.azure import (
    TraceError,
    TraceRequest,
    parse_trace,
    read_trace,
    split,
    window,
    zipf_weights,
)

CSV = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:46.1805900,10,2
"""


def test_rows_become_requests_sorted_from_zero_with_seven_digit_fractions() -> None:
    reqs = parse_trace(CSV.splitlines())
    assert reqs[0] == TraceRequest(0.0, 10, 2)
    assert reqs[1] == TraceRequest(pytest.approx(0.5), 374, 44)  # type: ignore[arg-type]
    assert reqs[2].arrival == pytest.approx(4.814579)
    assert [r.prompt for r in reqs] == [10, 374, 396]


def test_gzip_by_suffix(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(CSV.encode()))
    assert read_trace(path) == parse_trace(CSV.splitlines())


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a,b,c\n1,2,3\n", "header"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", "row 2"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,x,2\n", "row 2"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,-1,2\n", "negative"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1\n", "3 columns"),
    ],
)
def test_bad_files_are_refused_with_the_row(text: str, says: str) -> None:
    with pytest.raises(TraceError, match=says):
        parse_trace(text.splitlines())


def test_missing_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"nope\.csv"):
        read_trace(tmp_path / "nope.csv")


def test_zipf_weights_fall_as_one_over_rank_and_sum_to_one() -> None:
    w = zipf_weights(4, 1.0)
    assert sum(w) == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(2.0)
    assert w[0] / w[3] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        zipf_weights(0, 1.0)


def test_split_keeps_every_request_once_in_order_and_is_seeded() -> None:
    trace = [TraceRequest(float(i), i, 1) for i in range(20_000)]
    services = split(trace, 8, seed=7)
    assert sorted(r.prompt for s in services for r in s) == list(range(20_000))
    for s in services:
        assert [r.arrival for r in s] == sorted(r.arrival for r in s)
    assert split(trace, 8, seed=7) == services
    assert split(trace, 8, seed=8) != services
    sizes = [len(s) for s in services]
    # Zipf-like: the head service has about 1/H(8) = 37% of requests, the tail about 4.6%.
    assert sizes[0] / len(trace) == pytest.approx(0.368, abs=0.02)
    assert sizes[-1] / len(trace) == pytest.approx(0.046, abs=0.01)
    assert split(trace, 1, seed=7) == [trace]


def test_window_retimes_and_compresses() -> None:
    trace = [TraceRequest(float(i), i, 1) for i in range(10)]
    assert window(trace, 4.0, 4.0, speedup=2.0) == [
        TraceRequest(0.0, 4, 1),
        TraceRequest(0.5, 5, 1),
        TraceRequest(1.0, 6, 1),
        TraceRequest(1.5, 7, 1),
    ]
    with pytest.raises(ValueError):
        window(trace, 0.0, 0.0)
