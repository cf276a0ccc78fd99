"""``python -m knative`` as a child process, reaching the API emulator through a kubeconfig.

The emulator (harness/kube_emulator.py) is a test harness imitating a cluster;
each process gets its own address on it (``KubeEmulator.listen()``), so a test can tell its
requests apart. Lease settings are short, so a takeover happens within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from harness.ports import free_port
from tests.integration.pod_runner import REPLICA_TOKEN

# Short Lease settings (the defaults are 15/10/2 s).
LEASE_ENV = {
    "TORPOR_LEASE_DURATION_S": "3",
    "TORPOR_LEASE_RENEW_DEADLINE_S": "2",
    "TORPOR_LEASE_RETRY_PERIOD_S": "0.2",
}


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: emulator
  cluster: {{server: "{server}"}}
users:
- name: nobody
  user: {{}}
contexts:
- name: emulator
  context: {{cluster: emulator, user: nobody}}
current-context: emulator
"""
    )
    return path


class AutoscalerProcess:
    """One autoscaler replica; ``healthy()`` waits until its caches have synced."""

    def __init__(
        self, identity: str, api: str, bus_url: str, tmp_path: Path, *, tick_s: float = 0.2
    ) -> None:
        self.identity = identity
        self.api = api  # its own address on the emulator: its requests are told apart by it
        self.log = tmp_path / f"{identity}.log"
        self.metrics = f"http://127.0.0.1:{free_port()}"
        config = kubeconfig(tmp_path / f"{identity}.kubeconfig", api)
        env = os.environ | LEASE_ENV | {"TORPOR_IDENTITY": identity, "TORPOR_BUS_URL": bus_url,
                                         "TORPOR_REPLICA_TOKEN": REPLICA_TOKEN}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "knative",
                    "--kubeconfig", str(config),
                    "--metrics-port", self.metrics.rsplit(":", 1)[1],
                    "--tick", str(tick_s),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip

    async def healthy(self) -> None:
        """Its caches have synced (``/healthz`` is served only after that)."""
        async with httpx.AsyncClient(timeout=1) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                assert self.process.poll() is None, self.log.read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.metrics}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.identity} never became healthy:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
