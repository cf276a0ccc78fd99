"""A real embedded platform (`torpor up` as a child process) with the tiny model, for e2e."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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
            [sys.executable, "-m", "torpor", "--home", str(self.home), *args],
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
        return rows[0]

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
    with (home / "torpor-up.log").open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torpor",
                "--home",
                str(home),
                "up",
                "--port",
                str(port),
                "--control-port",
                str(control_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, (home / "torpor-up.log").read_text()
        address = home / "control.json"
        if address.exists() and json.loads(address.read_text())["pid"] == process.pid:
            return Platform(home, port, control_port, process)
        time.sleep(0.1)
    raise AssertionError("torpor up did not start")


def stop(platform: Platform) -> int:
    if platform.process.poll() is None:
        os.killpg(platform.process.pid, signal.SIGTERM)
    try:
        return platform.process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(platform.process.pid, signal.SIGKILL)
        raise


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
