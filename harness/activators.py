"""``python -m activator`` as a child process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from harness.ports import free_port


def start_activator(
    bus_url: str, ident: str, log_dir: Path, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """Start one activator on the bus and wait for its ``/healthz``; returns it and its URL."""
    port = free_port()
    log = log_dir / f"{ident}.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "activator", "--bus", bus_url, "--host", "127.0.0.1"),
                *("--port", str(port), "--id", ident, *extra),
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"activator {ident} exited: {log.read_text()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError(f"activator {ident} did not start: {log.read_text()}")


@contextmanager
def activators(bus_url: str, log_dir: Path, count: int = 2) -> Iterator[list[str]]:
    """``count`` activators (ids ``act-1``...) on one bus; SIGTERM and wait for each at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    try:
        for i in range(1, count + 1):
            proc, base = start_activator(bus_url, f"act-{i}", log_dir)
            procs.append(proc)
            bases.append(base)
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
