"""The embedded platform's actuator: each replica is a local runtime process on a loopback port.

A replica is started through a ``Launcher`` (by default ``python -m runtime serve ...``; its
arguments and startup report are the runtime process contract, ``runtime.contract``), in its own
process group so that stopping it also stops vLLM's engine-core child. Its stdout and stderr go
to ``home/logs/<namespace>/<revision>/<id>.log``, kept after it exits. It is READY once
``GET /health`` answers 200; if the process exits first
(or at any time later) it is FAILED with its exit code and last log lines.

``suspend`` freezes a ready replica with SIGSTOP to its whole process group (the runtime, vLLM's
API server and its engine-core child, which share the group), ``resume`` sends SIGCONT and waits
for ``/health``. What that saves is CPU: a frozen process is never scheduled (vLLM's engine core
otherwise polls and its API server ticks even when idle). What it does not save is memory: the
weights, the KV cache (``VLLM_CPU_KVCACHE_SPACE``) and the Python heaps stay resident, so a node
holds as many suspended replicas as its memory holds running ones. The cgroup freezer would do
the same without signals a process can observe (SIGCONT wakes ``SIGCHLD`` handlers in its
parent); this machine's cgroup v1 freezer is writable, but moving a replica into its own cgroup
needs its pid at launch, which the ``ReplicaHandle`` seam (and the warm pool behind it) does not
give, so signals it is. Nothing else probes a frozen replica: the liveness probe skips it, and
the loop never scrapes a suspended one.

A ready replica is probed with the revision's ``livenessProbe`` when the manifest has one
(``torpor.manifest.probes``), as the kubelet would: after ``failureThreshold`` failures in a row it
is FAILED and the loop replaces it. That catches a replica that is alive but stuck (its process
stopped, its event loop blocked), which no exit code reports.

On a GPU, vLLM's own sleep mode would be the mechanism (``POST /sleep?level=1`` offloads weights
to host memory and frees the GPU's; ``POST /wake_up`` restores them; both exist only when the
server runs with ``VLLM_SERVER_DEV_MODE=1`` and ``--enable-sleep-mode``): ``SleepModeFreezer``
below, selected with ``suspend_mode="vllm-sleep"``, prepared and untested here (vllm-cpu has no
sleep mode, and this machine no GPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import httpx

from autoscaler.actuator import Phase, Replica
from runtime.contract import (
    ENV_HOME,
    ENV_LORA_ADAPTERS,
    ENV_PLATFORM_TOKEN,
    ServeArgs,
    find_startup_report,
)
from torpor.credentials import PLATFORM_HEADER
from torpor.manifest.env import container_env, expand
from torpor.spec import LivenessProbe, RevisionSpec
from torpor.status import ColdStart

log = logging.getLogger("torpor.autoscaler.local")

_LOG_TAIL_LINES = 20
_HEALTH_POLL_S = 0.25
_STARTUP_LINE_WAIT_S = 3.0
_DRAIN_MARGIN_S = 3.0  # the runtime's drain ends this much before ``stop`` kills it
_WAKE_TIMEOUT_S = 30.0  # a resumed replica that does not answer /health by then is FAILED
# Where the shared manifests mount the models volume (the cache warmer's layout).
MODELS_MOUNT = "/models"



def own_env(revision: RevisionSpec, home: Path) -> dict[str, str]:
    """The replica's own environment, the only one its ``$(VAR)`` references read: the
    manifest's entries (each expanded from those before it) and what the platform defines for
    every replica (``TORPOR_HOME``), as the kubelet builds a container's. The platform's own
    environment is inherited but never expanded from (``torpor.manifest.env``)."""
    return container_env(revision.runtime.env, {ENV_HOME: str(home)})


def replica_env(revision: RevisionSpec, home: Path, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    # The startup line must reach the log file when printed, not when the buffer fills.
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(own_env(revision, home))
    return env


def local_model_path(model: str, home: Path) -> str:
    """Where this machine keeps a model that a pod finds on its models volume.

    The shared manifests mount the models volume at ``/models`` (``MODELS_MOUNT``, as the cache
    warmer does) and name ``--model=/models/<name>`` or ``file:///models/<name>``; the embedded
    platform keeps models in ``<home>/models``, so that prefix is mapped there. Anything else is
    served as written.
    """
    for prefix in (MODELS_MOUNT, "file://" + MODELS_MOUNT):
        if model == prefix or model.startswith(prefix + "/"):
            return str(home / "models") + model[len(prefix) :]
    return model


def runtime_args(
    revision: RevisionSpec,
    env: Mapping[str, str],
    *,
    host: str,
    port: int,
    replica_id: str,
    launched_at: float,
    drain_timeout_s: float | None = None,
) -> list[str]:
    """The arguments after ``-m runtime serve`` (``runtime.contract.ServeArgs``)."""
    rt = revision.runtime
    model = expand(rt.model, env)
    home = env.get(ENV_HOME)
    return ServeArgs(
        model=local_model_path(model, Path(home)) if home else model,
        host=host,
        port=port,
        served_model_name=rt.served_model_name or None,
        replica_id=replica_id,
        launched_at=launched_at,
        drain_timeout_s=drain_timeout_s,
        engine_args=tuple(expand(a, env) for a in rt.engine_args),
    ).encode()


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    revision: RevisionSpec
    replica_id: str
    host: str
    port: int
    launched_at: float  # wall clock, passed to the runtime as --launched-at
    args: tuple[str, ...]  # runtime arguments, variables already expanded
    env: Mapping[str, str]
    log_path: Path


class ReplicaHandle(Protocol):
    """A started replica process. ``signal`` reaches its whole process group."""

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def signal(self, sig: int) -> None: ...


class Launcher(Protocol):
    """Builds and starts a replica process. The seam a warm runtime pool plugs into."""

    async def launch(self, request: LaunchRequest) -> ReplicaHandle: ...


class _ProcessHandle:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        return await self._process.wait()

    def signal(self, sig: int) -> None:
        # start_new_session made the replica a group leader: pgid == pid. Signalling the group
        # reaches vLLM's engine-core child even after the leader has gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)


class SubprocessLauncher:
    """Spawns ``<command> <args>``; ``command`` defaults to ``<python> -m runtime serve``."""

    def __init__(self, command: Sequence[str]) -> None:
        self._command = tuple(command)

    async def launch(self, request: LaunchRequest) -> ReplicaHandle:
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        with request.log_path.open("ab") as logfile:
            process = await asyncio.create_subprocess_exec(
                *self._command,
                *request.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(request.env),
                start_new_session=True,
            )
        return _ProcessHandle(process)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# vLLM's log prefixes: "(EngineCore pid=12) " and "ERROR 12-07 21:05:23 [core.py:1512] ".
_PROCESS_PREFIX = re.compile(r"^\((?:[\w.-]+ )?pid=\d+\)\s*")
_LEVEL_PREFIX = re.compile(
    r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s?"
)
_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)(?::\s.*)?$"
)
_RUNTIME_PREFIX = "torpor runtime: "
# A line that sends its reader to the trace above it for the cause ("EngineCore encountered an
# issue. See stack trace (above) for the root cause.", "Worker failed with error '...', please
# check the stack trace above"): the cause is an earlier line, if the log has it.
_POINTS_ABOVE = re.compile(r"\babove\b", re.IGNORECASE)
_ERROR_LINE_SCAN = 400  # log lines read back for it


def error_line(text: str) -> str | None:
    """The meaningful line of a replica's log: the Python exception that ended it (its class and
    message, e.g. ``IndexError: index out of range in self``), not a traceback frame, vLLM's log
    prefix or the noise a dying process prints after it.

    The last exception line (or the runtime's own ``torpor runtime: ...`` word) wins, except one
    that points to the trace above it for its cause (vLLM wraps a worker's exception so, twice):
    then the last one before it that does not. Without an exception, the last ``ERROR`` or
    ``CRITICAL`` log message; None when there is nothing of the kind.
    """
    candidates: list[str] = []
    logged: list[str] = []
    for raw in text.splitlines()[-_ERROR_LINE_SCAN:]:
        line = _PROCESS_PREFIX.sub("", raw.strip())
        level = _LEVEL_PREFIX.match(line)
        rest = line[level.end() :] if level else line
        message = rest.strip()
        if (
            message.startswith((_RUNTIME_PREFIX, "Fatal Python error:"))
            or _EXCEPTION_LINE.match(message)
        ):
            candidates.append(message)
        elif (
            level is not None
            and level.group(1) in ("ERROR", "CRITICAL")
            and message
            and not rest[:1].isspace()  # a traceback frame or its source line
            and not message.startswith("Traceback")
        ):
            logged.append(message)
    for line in reversed(candidates):
        if not _POINTS_ABOVE.search(line):
            return line
    if candidates:
        return candidates[-1]
    return logged[-1] if logged else None


def exit_reason(code: int) -> str:
    """``exited with code N``, naming the signal that killed it (``-4`` is SIGILL)."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"exited with code {code} ({signal.Signals(-code).name})"
    return f"exited with code {code}"


def parse_startup_line(text: str, fallback: ColdStart) -> ColdStart | None:
    """The runtime's startup report in its log, as a ``ColdStart``; ``None`` if not printed yet."""
    report = find_startup_report(text)
    if report is None:
        return None
    return replace(fallback, phases=report.phases, warm=report.warm, engine=report.engine)


class Freezer(Protocol):
    """How a replica is frozen and woken: the mechanism behind ``suspend`` and ``resume``."""

    async def freeze(self, handle: ReplicaHandle, url: str) -> None: ...

    async def thaw(self, handle: ReplicaHandle, url: str) -> None: ...


class SignalFreezer:
    """SIGSTOP / SIGCONT to the replica's process group: CPU freed, memory kept."""

    async def freeze(self, handle: ReplicaHandle, url: str) -> None:
        handle.signal(signal.SIGSTOP)

    async def thaw(self, handle: ReplicaHandle, url: str) -> None:
        handle.signal(signal.SIGCONT)


class SleepModeFreezer:
    """vLLM's sleep mode, for GPU replicas: level 1 moves the weights to host memory and frees
    the GPU's memory (KV cache discarded); the process keeps running. The replica must run with
    ``VLLM_SERVER_DEV_MODE=1`` and ``--enable-sleep-mode``. Prepared, not run on this CPU-only
    machine (vllm-cpu has no sleep mode); ``benchmarks/gpu`` is where its wake time belongs."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        level: int = 1,
        credential: Callable[[str], str | None] = lambda url: None,
    ) -> None:
        self._client = client
        self._level = level
        self._credential = credential  # /sleep and /wake_up are platform routes (runtime.gate)

    def _headers(self, url: str) -> dict[str, str]:
        token = self._credential(url)
        return {PLATFORM_HEADER: token} if token else {}

    async def freeze(self, handle: ReplicaHandle, url: str) -> None:
        response = await self._client.post(
            f"{url}/sleep", params={"level": str(self._level)}, timeout=60.0,
            headers=self._headers(url),
        )
        response.raise_for_status()

    async def thaw(self, handle: ReplicaHandle, url: str) -> None:
        response = await self._client.post(
            f"{url}/wake_up", timeout=120.0, headers=self._headers(url)
        )
        response.raise_for_status()


SUSPEND_MODES = ("signals", "vllm-sleep")


@dataclass(slots=True)
class _Proc:
    replica: Replica
    handle: ReplicaHandle | None
    log_path: Path
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    liveness: LivenessProbe | None = None


class LocalActuator:
    def __init__(
        self,
        *,
        home: Path,
        python: str = sys.executable,
        host: str = "127.0.0.1",
        ready_timeout_s: float = 600.0,
        stop_timeout_s: float = 15.0,
        launcher: Launcher | None = None,
        command: Sequence[str] | None = None,
        clock: Callable[[], float] = time.time,
        suspend_mode: str = "signals",
        wake_timeout_s: float = _WAKE_TIMEOUT_S,
        freezer: Freezer | None = None,
    ) -> None:
        """``suspend_mode``: ``signals`` (SIGSTOP/SIGCONT, CPU) or ``vllm-sleep`` (GPU, vLLM's
        sleep mode); ``freezer`` overrides it with any other mechanism."""
        if suspend_mode not in SUSPEND_MODES:
            raise ValueError(f"suspend_mode must be one of {SUSPEND_MODES}, not {suspend_mode!r}")
        self._home = Path(home)
        self._host = host
        self._ready_timeout_s = ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._launcher: Launcher = launcher or SubprocessLauncher(
            command or (python, "-m", "runtime", "serve")
        )
        self._clock = clock
        self._procs: dict[str, dict[str, _Proc]] = {}  # revision key -> replica id -> proc
        # Every replica process group not yet reaped, stopping ones included: ``kill_now`` must
        # reach a replica that ``_stop`` has already taken out of ``_procs``.
        self._groups: dict[str, ReplicaHandle] = {}
        self._client = httpx.AsyncClient(timeout=1.0)
        self._freezer: Freezer = freezer or (
            SleepModeFreezer(self._client, credential=self.credential)
            if suspend_mode == "vllm-sleep"
            else SignalFreezer()
        )
        self._wake_timeout_s = wake_timeout_s
        self._closed = False
        self._abandoned: set[asyncio.Task[None]] = set()  # supervisors of interrupted stops
        # Each replica's platform credential (``runtime.gate``), by its URL: generated here,
        # handed to the replica in its environment, used for the platform's own calls to it
        # (``credential``: scrapes, adapter loads) and never published or logged.
        self._tokens: dict[str, str] = {}

    def credential(self, url: str) -> str | None:
        """The platform credential of the replica at ``url`` (None: not one of ours)."""
        return self._tokens.get(url.rstrip("/"))

    def log_path(self, revision: str, replica_id: str) -> Path:
        namespace, _, name = revision.partition("/")
        return self._home / "logs" / namespace / name / f"{replica_id}.log"

    async def start(self, revision: RevisionSpec, count: int) -> None:
        for _ in range(count):
            await self._start_one(revision)

    async def _start_one(self, revision: RevisionSpec) -> None:
        key = revision.ref.key
        replica_id = f"{revision.ref.name}-{secrets.token_hex(3)}"
        port = free_port(self._host)
        launched_at = self._clock()
        env = replica_env(revision, self._home, os.environ)
        token = secrets.token_urlsafe(32)
        env[ENV_PLATFORM_TOKEN] = token
        if revision.lora is not None:
            # The adapters the replica may load, as the autoscaler's loads name them.
            env[ENV_LORA_ADAPTERS] = json.dumps(
                {a.name: local_model_path(a.source, self._home) for a in revision.lora.adapters}
            )
        args = runtime_args(
            revision,
            own_env(revision, self._home),  # args expand from the replica's own env only
            host=self._host,
            port=port,
            replica_id=replica_id,
            launched_at=launched_at,
            # Drained before the SIGKILL that follows ``stop_timeout_s`` after SIGTERM.
            drain_timeout_s=max(0.0, self._stop_timeout_s - _DRAIN_MARGIN_S),
        )
        path = self.log_path(key, replica_id)
        url = f"http://{self._host}:{port}"
        self._tokens[url] = token
        replica = Replica(replica_id, key, Phase.STARTING, url=None, launched_at=launched_at)
        proc = _Proc(replica, None, path, liveness=revision.runtime.liveness)
        self._procs.setdefault(key, {})[replica_id] = proc
        try:
            proc.handle = await self._launcher.launch(
                LaunchRequest(
                    revision, replica_id, self._host, port, launched_at, tuple(args), env, path
                )
            )
        except OSError as e:
            self._tokens.pop(url, None)
            proc.replica = replace(replica, phase=Phase.FAILED, error=f"could not launch: {e}")
            return
        self._groups[replica_id] = proc.handle
        log.info("replica %s of %s launched on port %d, log %s", replica_id, key, port, path)
        proc.task = asyncio.create_task(self._supervise(proc, url), name=f"replica:{replica_id}")

    async def _supervise(self, proc: _Proc, url: str) -> None:
        assert proc.handle is not None
        exited = asyncio.create_task(proc.handle.wait())
        try:
            ready = await self._wait_ready(url, exited)
            if ready:
                now = self._clock()
                proc.replica = replace(proc.replica, phase=Phase.READY, url=url, ready_at=now)
                log.info(
                    "replica %s ready after %.1fs",
                    proc.replica.replica_id,
                    now - proc.replica.launched_at,
                )
                cold_start = await self._cold_start(proc, exited)
                proc.replica = replace(proc.replica, cold_start=cold_start)
                if proc.liveness is not None:
                    await self._probe_until_dead(proc, url, proc.liveness, exited)
            elif not exited.done():
                proc.replica = replace(
                    proc.replica,
                    phase=Phase.FAILED,
                    error=f"not ready after {self._ready_timeout_s:g}s\n{log_tail(proc.log_path)}",
                    error_line=error_line(log_tail(proc.log_path, _ERROR_LINE_SCAN)),
                )
                proc.handle.signal(signal.SIGKILL)
                return
            code = await exited
            if not proc.stopping:
                line = error_line(log_tail(proc.log_path, _ERROR_LINE_SCAN))
                proc.replica = replace(
                    proc.replica,
                    phase=Phase.FAILED,
                    error=f"{exit_reason(code)}\n{log_tail(proc.log_path)}",
                    error_line=line,
                )
                log.warning(
                    "replica %s %s: %s", proc.replica.replica_id, exit_reason(code), line or "-"
                )
        finally:
            exited.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await exited

    async def _probe_until_dead(
        self, proc: _Proc, url: str, probe: LivenessProbe, exited: asyncio.Task[int]
    ) -> None:
        """Run the revision's liveness probe on a ready replica, as the kubelet does, until the
        process exits or fails the probe ``failure_threshold`` times in a row: then it is FAILED
        (the loop stops and replaces it, as a crash). A suspended replica is not probed."""
        if probe.initial_delay_s > 0:
            await asyncio.wait({exited}, timeout=probe.initial_delay_s)
        failures, why = 0, ""
        while not exited.done():
            await asyncio.wait({exited}, timeout=probe.period_s)
            if exited.done() or proc.stopping or proc.replica.phase is not Phase.READY:
                failures = 0
                continue
            why = await self._probe(url, probe)
            if proc.replica.phase is not Phase.READY:
                failures = 0  # suspended while the probe ran: a frozen process answers nothing
                continue
            failures = failures + 1 if why else 0
            if failures >= probe.failure_threshold:
                error = f"liveness probe failed {failures} times in a row: {why}"
                log.warning("replica %s: %s", proc.replica.replica_id, error)
                proc.replica = replace(proc.replica, phase=Phase.FAILED, error=error)
                return

    async def _probe(self, url: str, probe: LivenessProbe) -> str:
        """One probe: "" if it passed, else why not."""
        try:
            if probe.path is None:
                host, _, port = url.removeprefix("http://").rpartition(":")
                async with asyncio.timeout(probe.timeout_s):
                    _, writer = await asyncio.open_connection(host, int(port))
                    writer.close()
                    await writer.wait_closed()
                return ""
            response = await self._client.get(
                url + probe.path, timeout=probe.timeout_s, headers=self._platform_headers(url)
            )
        except (OSError, TimeoutError, httpx.HTTPError) as e:
            return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if 200 <= response.status_code < 400:
            return ""
        return f"GET {probe.path} answered {response.status_code}"

    def _platform_headers(self, url: str) -> dict[str, str]:
        token = self._tokens.get(url)
        return {PLATFORM_HEADER: token} if token else {}

    async def _wait_ready(self, url: str, exited: asyncio.Task[int]) -> bool:
        deadline = asyncio.get_running_loop().time() + self._ready_timeout_s
        while not exited.done() and asyncio.get_running_loop().time() < deadline:
            try:
                response = await self._client.get(url + "/health")
                if response.status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.wait({exited}, timeout=_HEALTH_POLL_S)
        return False

    async def _cold_start(self, proc: _Proc, exited: asyncio.Task[int]) -> ColdStart:
        r = proc.replica
        total = (r.ready_at or r.launched_at) - r.launched_at
        fallback = ColdStart(r.replica_id, started_at=r.launched_at, total_s=total)
        # The runtime prints its startup line around the time /health turns 200.
        deadline = asyncio.get_running_loop().time() + _STARTUP_LINE_WAIT_S
        while True:
            found = parse_startup_line(log_tail(proc.log_path, 200), fallback)
            if found is not None or exited.done() or asyncio.get_running_loop().time() > deadline:
                return found or fallback
            await asyncio.wait({exited}, timeout=0.1)

    async def stop(self, revision: RevisionSpec, replica_id: str) -> None:
        await self._stop(revision.ref.key, replica_id)

    async def _stop(self, key: str, replica_id: str) -> None:
        proc = self._procs.get(key, {}).pop(replica_id, None)
        if proc is None:
            return
        if not self._procs.get(key):
            self._procs.pop(key, None)
        proc.stopping = True
        if proc.handle is not None and proc.handle.returncode is None:
            proc.handle.signal(signal.SIGTERM)
            # A suspended replica handles the SIGTERM (pending meanwhile) once continued.
            proc.handle.signal(signal.SIGCONT)
            try:
                async with asyncio.timeout(self._stop_timeout_s):
                    await proc.handle.wait()
            except TimeoutError:
                log.warning("replica %s ignored SIGTERM; killing it", replica_id)
            except asyncio.CancelledError:
                # The caller gave up (the autoscaler stopping mid-scale-down): the replica is no
                # longer in the table, so nothing else would ever stop it. A replica still
                # starting ignores SIGTERM; kill it now rather than leave an orphan.
                proc.handle.signal(signal.SIGKILL)
                if proc.task is not None and not proc.task.done():
                    # Its supervisor ends once the killed process is reaped; ``aclose`` waits
                    # for that, so no process or task outlives the actuator.
                    self._abandoned.add(proc.task)
                    proc.task.add_done_callback(self._abandoned.discard)
                raise
        if proc.handle is not None:
            # Whatever the leader left behind in its group (vLLM's engine core) goes too.
            proc.handle.signal(signal.SIGKILL)
            await proc.handle.wait()
        self._groups.pop(replica_id, None)
        if proc.replica.url is not None:
            self._tokens.pop(proc.replica.url, None)
        if proc.task is not None:
            proc.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await proc.task
        log.info("replica %s of %s stopped", replica_id, key)

    def _proc(self, key: str, replica_id: str, phase: Phase) -> tuple[_Proc, ReplicaHandle, str]:
        proc = self._procs.get(key, {}).get(replica_id)
        if proc is None:
            raise LookupError(f"no replica {replica_id} of {key}")
        if proc.replica.phase is not phase or proc.handle is None or proc.replica.url is None:
            raise ValueError(f"replica {replica_id} is {proc.replica.phase}, not {phase}")
        return proc, proc.handle, proc.replica.url

    async def suspend(self, revision: RevisionSpec, replica_id: str) -> None:
        proc, handle, url = self._proc(revision.ref.key, replica_id, Phase.READY)
        await self._freezer.freeze(handle, url)
        proc.replica = replace(proc.replica, phase=Phase.SUSPENDED, suspended_at=self._clock())
        log.info("replica %s suspended", replica_id)

    async def resume(self, revision: RevisionSpec, replica_id: str) -> None:
        proc, handle, url = self._proc(revision.ref.key, replica_id, Phase.SUSPENDED)
        started = time.monotonic()
        try:
            await self._freezer.thaw(handle, url)
            awake = await self._answers(url, self._wake_timeout_s)
        except Exception as e:
            awake, error = False, f"{type(e).__name__}: {e}"
        else:
            error = f"no answer on /health {self._wake_timeout_s:g}s after waking"
        if proc.replica.phase is not Phase.SUSPENDED:
            return  # it exited meanwhile: the supervisor has said so
        if not awake:
            proc.replica = replace(proc.replica, phase=Phase.FAILED, error=error)
            log.warning("replica %s did not wake: %s", replica_id, error)
            return
        proc.replica = replace(proc.replica, phase=Phase.READY, suspended_at=None)
        log.info("replica %s woke in %.3fs", replica_id, time.monotonic() - started)

    async def _answers(self, url: str, timeout_s: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            try:
                if (await self._client.get(url + "/health")).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.005)
        return False

    def replicas(self, revision: str) -> Sequence[Replica]:
        return [p.replica for p in self._procs.get(revision, {}).values()]

    async def forget(self, revision: str) -> None:
        ids = list(self._procs.get(revision, {}))
        await asyncio.gather(*(self._stop(revision, i) for i in ids))

    def kill_now(self) -> None:
        """SIGKILL every replica's process group, synchronously.

        For a platform that exits without waiting (a second SIGTERM): replicas run in their own
        sessions, so nothing else would stop them, or vLLM's engine core beside them.
        """
        for handle in list(self._groups.values()):
            handle.signal(signal.SIGKILL)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(self.forget(key) for key in list(self._procs)))
        self.kill_now()  # any stop that was interrupted: nothing outlives the actuator
        await asyncio.gather(*self._abandoned, return_exceptions=True)
        await self._client.aclose()
