"""A real embedded platform (`torpor up` as a child process) with the tiny model, for e2e."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from embedded.child import spawn_up, stop_up, wait_up

REPO = Path(__file__).resolve().parents[2]
TINY_CHAT = REPO / "manifests/examples/tiny-chat.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Platform:
    home: Path
    port: int
    control_port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "embedded", "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)
        return doc

    def revision(self, service: str) -> dict[str, Any]:
        rows = [r for r in self.status()["revisions"] if r["service"] == service]
        assert len(rows) == 1, rows
        row: dict[str, Any] = rows[0]
        return row

    def wait_for(self, service: str, *, desired: int, ready: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            row = self.revision(service)
            if row["desired_replicas"] == desired and row["ready_replicas"] == ready:
                return
            time.sleep(0.5)
        raise AssertionError(f"{service} never reached desired={desired} ready={ready}: {row}")


def _start(home: Path) -> Platform:
    port, control_port = free_port(), free_port()
    process = spawn_up(home, port=port, control_port=control_port)
    wait_up(home, process)
    return Platform(home, port, control_port, process)


def stop(platform: Platform) -> int:
    return stop_up(platform.process)


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runtime.tinymodel import make_tiny_llama

    home = tmp_path_factory.mktemp("torpor-home")
    make_tiny_llama(home / "models" / "tiny-llama")
    return home


@pytest.fixture
def platform(tiny_home: Path) -> Iterator[Platform]:
    p = _start(tiny_home)
    try:
        yield p
    finally:
        stop(p)
        print((tiny_home / "torpor-up.log").read_text()[-5000:])
