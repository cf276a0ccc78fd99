"""A test harness playing scheduler, kubelet and endpoints controller for one Deployment's pods.

For every pod the emulator's ReplicaSet creates, ``PodRunner`` starts what the pod's container
would run, ``python -m runtime serve`` with the container's arguments and Knative's container
contract in the environment (``PORT``, ``K_SERVICE``, ``K_CONFIGURATION``, ``K_REVISION``,
``HOSTNAME``), on a loopback address of its own (``127.0.0.N``, every pod on the same port, as pod
IPs are), reports it Running and then Ready once ``/health`` answers (the readiness probe), which
lists it in the revision's private EndpointSlice. When the ReplicaSet terminates a pod it sends
the process group SIGTERM, as the kubelet does, and removes the pod once the process has exited
(SIGKILL after the grace period). A process that exits unready is reported as a container in
CrashLoopBackOff with its last log line, as the kubelet reports it. It is a harness, not a
kubelet: no images, no probes but the one, ``$(VAR)`` in arguments expands from the container's
env and ``node_env``, and a volume mount (``mounts``: mount path -> directory here) is imitated by
rewriting that path prefix in the arguments, since a process here has no mount namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.kube_emulator import KubeEmulator

Json = dict[str, Any]
GRACE_S = 30.0


@dataclass
class _Running:
    ip: str
    process: asyncio.subprocess.Process
    log: Path
    ready: bool = False
    crashed: bool = False
    stopping: asyncio.Task[None] | None = None


@dataclass
class PodRunner:
    emulator: KubeEmulator
    namespace: str
    deployment: str
    port: int
    logs: Path
    node_env: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, Path] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)  # pod names, in start order
    exits: dict[str, int] = field(default_factory=dict)  # pod name -> exit code
    _pods: dict[str, _Running] = field(default_factory=dict)
    _next_ip: int = 10

    async def run(self, poll_s: float = 0.1) -> None:
        self.emulator.serving_port = self.port
        async with httpx.AsyncClient(timeout=1.0) as client:
            try:
                while True:
                    await self._step(client)
                    await asyncio.sleep(poll_s)
            finally:
                await asyncio.gather(
                    *(self._stop(name, r, kill=True) for name, r in list(self._pods.items())),
                    return_exceptions=True,
                )

    async def _step(self, client: httpx.AsyncClient) -> None:
        for pod in self.emulator.pods_of(self.namespace, self.deployment):
            name = pod["metadata"]["name"]
            running = self._pods.get(name)
            if pod["metadata"].get("deletionTimestamp"):
                if running is not None and running.stopping is None:
                    running.stopping = asyncio.create_task(self._stop(name, running))
                elif running is None and name not in self.exits:
                    self.emulator.finish_terminating(self.namespace, name)  # never started
                    self.exits[name] = 0
                continue
            if running is None and name not in self.exits:
                self._pods[name] = await self._start(pod)
            elif running is not None and not running.ready:
                if running.process.returncode is not None:
                    if not running.crashed:
                        running.crashed = True
                        self._report_crash(name, running)
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    health = await client.get(f"http://{running.ip}:{self.port}/health")
                    if health.status_code == 200:
                        running.ready = True
                        self.emulator.pod_ready(self.namespace, name, running.ip)

    async def _start(self, pod: Json) -> _Running:
        meta = pod["metadata"]
        name = meta["name"]
        labels = meta.get("labels") or {}
        (container,) = pod["spec"]["containers"]
        env = dict(self.node_env)
        for item in container.get("env") or ():
            env[item["name"]] = _expand(str(item.get("value", "")), env)
        args = [self._mounted(_expand(str(a), env)) for a in container.get("args") or ()]
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        env |= {
            "PORT": str(self.port),
            "K_SERVICE": labels.get("serving.knative.dev/service", ""),
            "K_CONFIGURATION": labels.get("serving.knative.dev/configuration", ""),
            "K_REVISION": labels.get("serving.knative.dev/revision", ""),
            "HOSTNAME": name,
            "PYTHONUNBUFFERED": "1",
            # The cluster's replica credential, as a mounted Secret would give it (issue 23).
            "TORPOR_PLATFORM_TOKEN": REPLICA_TOKEN,
        }
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtime", "serve", *args, f"--host={ip}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=os.environ | env,
                start_new_session=True,
            )  # fmt: skip
        self.started.append(name)
        # Scheduled and Running, not ready yet: listed unready in the private service.
        self.emulator.pod_ready(self.namespace, name, ip, ready=False)
        return _Running(ip, process, log)

    async def _stop(self, name: str, running: _Running, *, kill: bool = False) -> None:
        process = running.process
        if process.returncode is None:
            _signal(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                async with asyncio.timeout(GRACE_S):
                    await process.wait()
            except TimeoutError:
                _signal(process.pid, signal.SIGKILL)
                await process.wait()
        self.exits[name] = process.returncode if process.returncode is not None else -1
        self._pods.pop(name, None)
        with contextlib.suppress(KeyError, AssertionError):
            self.emulator.finish_terminating(self.namespace, name)

    def _mounted(self, arg: str) -> str:
        for mount, directory in self.mounts.items():
            for prefix in (mount, f"file://{mount}"):
                if arg.endswith(prefix) or f"{prefix}/" in arg:
                    return arg.replace(prefix, str(directory), 1)
        return arg

    def _report_crash(self, name: str, running: _Running) -> None:
        pod = copy.deepcopy(self.emulator.get("api/v1", "pods", self.namespace, name))
        if pod is None:
            return
        lines = running.log.read_text(errors="replace").strip().splitlines()
        pod["status"]["containerStatuses"] = [
            {
                "name": pod["spec"]["containers"][0].get("name", "user-container"),
                "ready": False,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {
                    "terminated": {
                        "reason": "Error",
                        "exitCode": running.process.returncode,
                        "message": lines[-1] if lines else "",
                    }
                },
            }
        ]
        self.emulator.put("api/v1", "pods", pod)

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.logs.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)


REPLICA_TOKEN = "integration-replica-token"  # the autoscaler process gets the same


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` references; unknown ones stay as written, as there."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
