"""``torpor up`` as a child process: for ``torpor demo``, the end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from embedded.state import StateDir


class PlatformDidNotStart(RuntimeError):
    pass


def spawn_up(
    home: Path, *, port: int, control_port: int, extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start ``torpor up`` in its own session, logging to ``<home>/torpor-up.log``."""
    StateDir(home).ensure()
    with (home / "torpor-up.log").open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "embedded",
                "--home",
                str(home),
                "up",
                "--port",
                str(port),
                "--control-port",
                str(control_port),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_up(home: Path, process: subprocess.Popen[bytes], *, timeout_s: float = 60.0) -> None:
    """Until this process has written its address (it listens by then), or it exits."""
    state = StateDir(home)
    log = home / "torpor-up.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise PlatformDidNotStart(f"torpor up exited ({process.returncode}); {log}:\n{tail}")
        address = state.read_address()
        if address is not None and address.pid == process.pid:
            return
        time.sleep(0.1)
    raise PlatformDidNotStart(f"torpor up did not start within {timeout_s:.0f} s; see {log}")


def stop_up(process: subprocess.Popen[bytes], *, timeout_s: float = 90.0) -> int:
    """SIGTERM (drain, stop replicas), then SIGKILL to the whole group past ``timeout_s``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()
