"""``torpor up`` as a child process, for end-to-end tests and benchmarks.

One way to start the embedded platform outside the process that measures or asserts: built on
``embedded.child`` (what ``torpor demo`` uses), so tests, benchmarks and the demo start, wait for
and stop it alike. ``Platform`` is a context manager::

    with Platform.start(home) as platform:
        platform.cli("deploy", "-f", str(TINY_CHAT))

``Control`` talks to the control API over HTTP for code that is already async and calls it often
(the CLI costs a Python start per call, ~1 s on the 2-core test machine; races need less).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from embedded.child import PlatformDidNotStart, spawn_up, stop_up, wait_up
from embedded.state import StateDir
from harness.ports import free_port

__all__ = ["Control", "Platform", "PlatformDidNotStart"]


@dataclass
class Platform:
    """A running ``torpor up`` for ``home``: its ports, its process, and its CLI."""

    home: Path
    port: int
    control_port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls,
        home: Path,
        *,
        port: int = 0,
        control_port: int = 0,
        extra: Sequence[str] = (),
        timeout_s: float = 90.0,
    ) -> Platform:
        """``torpor up`` for ``home`` on these ports (free ones where 0), once it listens.

        ``extra`` is passed to ``torpor up`` (``--warm-pool 1``). If it does not come up within
        ``timeout_s`` its process group is killed and ``PlatformDidNotStart`` carries its log's
        tail. Output goes to ``<home>/torpor-up.log``, appended across starts.
        """
        port, control_port = port or free_port(), control_port or free_port()
        process = spawn_up(home, port=port, control_port=control_port, extra=extra)
        try:
            wait_up(home, process, timeout_s=timeout_s)
        except PlatformDidNotStart:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            raise
        return cls(home, port, control_port, process)

    def restart(self, *, timeout_s: float = 90.0) -> Platform:
        """A new ``torpor up`` on the same home and ports (this one must have stopped)."""
        assert self.process.poll() is not None, "stop the platform before starting it again"
        return Platform.start(
            self.home, port=self.port, control_port=self.control_port, timeout_s=timeout_s
        )

    def stop(self) -> int:
        """SIGTERM to its process group (drain, stop replicas), SIGKILL past 90 s; exit code."""
        return stop_up(self.process)

    def __enter__(self) -> Platform:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The activator's address: requests go to ``<url>/<namespace>/<service>/v1/...``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def log_tail(self, chars: int = 5000) -> str:
        log = self.home / "torpor-up.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``torpor --home <home> <args>``, as a user would run it."""
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
        """The status row of ``service``'s one revision."""
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


class Control:
    """The platform's control API over HTTP, with its bearer token."""

    def __init__(self, platform: Platform, *, timeout_s: float = 30.0) -> None:
        token = StateDir(platform.home).read_token()
        if token is None:
            raise PlatformDidNotStart(f"no control token under {platform.home}")
        self._client = httpx.AsyncClient(
            base_url=platform.control_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )

    async def __aenter__(self) -> Control:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def deploy(self, manifest: Path) -> dict[str, Any]:
        """Apply ``manifest`` (as ``torpor deploy -f`` does); the control API's answer."""
        text = await asyncio.to_thread(manifest.read_bytes)
        r = await self._client.post("/v1/services", content=text, params={"source": manifest.name})
        if r.status_code not in (200, 201):
            raise RuntimeError(f"deploy {manifest.name}: {r.status_code} {r.text}")
        doc: dict[str, Any] = r.json()
        return doc

    async def delete(self, namespace: str, service: str) -> None:
        (await self._client.delete(f"/v1/services/{namespace}/{service}")).raise_for_status()

    async def status(self) -> dict[str, Any]:
        r = await self._client.get("/v1/status")
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc

    async def revisions(self, service: str) -> list[dict[str, Any]]:
        """The status rows of ``service``'s revisions."""
        return [row for row in (await self.status())["revisions"] if row["service"] == service]
