"""A pool of standby runtime processes, and a launcher that starts replicas from it.

A standby (`python -m runtime standby --socket PATH`) has imported vLLM and torch but holds no
model; assigning it the `serve` arguments turns it into a replica that only resolves weights and
builds its engine. This module only spawns processes and speaks the standby's socket protocol,
part 4 of the runtime process contract; of the runtime it imports only `runtime.contract`
(standard library only), so the control plane stays engine-free.

Wiring (embedded platform): ``LocalActuator(launcher=WarmPoolLauncher(pool, fallback))`` where
``fallback`` is the actuator's own ``SubprocessLauncher``; with ``size=0`` every launch falls
back, i.e. the plain start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from embedded.local_actuator import Launcher, LaunchRequest, ReplicaHandle
from runtime.contract import ContractError, StandbyAssignment, StandbyReply

log = logging.getLogger("embedded.warmpool")


class StandbyError(RuntimeError):
    pass


class StandbyProcess:
    """One standby; after `assign` it is the replica process (a `ReplicaHandle`)."""

    def __init__(
        self, process: asyncio.subprocess.Process, socket_path: Path, log_path: Path
    ) -> None:
        self.process = process
        self.socket_path = socket_path
        self.log_path = log_path
        self.assigned = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    def signal(self, sig: int) -> None:
        # Standbys run in their own session: the group also holds vLLM's engine-core child.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def is_ready(self) -> bool:
        return self.returncode is None and self.socket_path.exists()

    async def assign(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        stdout_fd: int | None = None,
        stderr_fd: int | None = None,
        deadline_s: float = 10.0,
    ) -> int:
        """Hand the standby its `serve` arguments (and its log fds); returns its pid."""
        if self.assigned:
            raise StandbyError("standby already assigned")
        self.assigned = True
        fds = (
            []
            if stdout_fd is None
            else [stdout_fd, stderr_fd if stderr_fd is not None else stdout_fd]
        )
        payload = StandbyAssignment(tuple(argv), dict(env)).encode()
        return await asyncio.wait_for(
            asyncio.to_thread(_send_assignment, self.socket_path, payload, fds), deadline_s
        )


def _send_assignment(path: Path, payload: bytes, fds: list[int]) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError as e:
            raise StandbyError(f"standby socket {path}: {e}") from e
        socket.send_fds(s, [payload], fds)
        reply = b""
        while b"\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                raise StandbyError("standby closed the connection without an answer")
            reply += chunk
    try:
        answer = StandbyReply.parse(reply.split(b"\n", 1)[0])
    except ContractError as e:
        raise StandbyError(str(e)) from None
    if not answer.accepted or answer.pid is None:
        raise StandbyError(f"standby refused the assignment: {answer.error}")
    return answer.pid


class WarmPool:
    """Keeps `size` standbys ready; `take()` hands one out and a refill starts after a delay.

    The refill is delayed and sequential on purpose: a standby's imports take seconds of CPU,
    and on a small machine they would slow the very cold start the pool is speeding up.
    """

    def __init__(
        self,
        size: int,
        home: Path,
        python: str = sys.executable,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        refill_delay_s: float = 10.0,
        ready_timeout_s: float = 300.0,
        retry_backoff_s: float = 5.0,
    ) -> None:
        self.size = size
        self.home = Path(home)
        self._command = tuple(command) if command else (python, "-m", "runtime", "standby")
        self._env = dict(env) if env is not None else None
        self._refill_delay_s = refill_delay_s
        self._ready_timeout_s = ready_timeout_s
        self._retry_backoff_s = retry_backoff_s
        self._ready: list[StandbyProcess] = []
        self._starting: StandbyProcess | None = None
        self._wake = asyncio.Event()
        self._delay_next = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._seq = 0
        self._short_dir: Path | None = None

    def start(self) -> None:
        if self._task is None and self.size > 0 and not self._closed:
            self._task = asyncio.create_task(self._refill_loop(), name="warmpool-refill")

    @property
    def ready_count(self) -> int:
        return sum(1 for s in self._ready if s.is_ready())

    async def wait_ready(self, count: int | None = None) -> None:
        """Block until `count` (default: size) standbys are ready; for benchmarks and tests.

        Unbounded by itself: callers bound it (`asyncio.timeout`)."""
        want = self.size if count is None else count
        self.start()
        while self.ready_count < want:
            if self._closed:
                raise StandbyError("pool closed")
            await asyncio.sleep(0.05)

    async def take(self) -> StandbyProcess | None:
        """A ready standby, or None at once if there is none (the caller starts plainly)."""
        self.start()
        while self._ready:
            sb = self._ready.pop(0)
            if sb.is_ready():
                self._delay_next = True
                self._wake.set()
                return sb
            await _stop(sb)  # died while waiting: do not hand out a corpse
        self._wake.set()
        return None

    async def aclose(self) -> None:
        self._closed = True
        # Taken before the cancel: a cancelled _spawn leaves its standby to us (it sees _closed)
        # but its finally clears _starting, which orphaned that standby (found by tests/faults).
        starting = self._starting
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        starting = starting or self._starting
        standbys = [*self._ready, *([starting] if starting else [])]
        self._ready.clear()
        self._starting = None
        await asyncio.gather(*(_stop(s) for s in standbys))
        if self._short_dir is not None:
            # Only once empty: a standby already taken may not have picked up its socket yet.
            with contextlib.suppress(OSError):
                self._short_dir.rmdir()

    async def _refill_loop(self) -> None:
        while not self._closed:
            self._ready = [s for s in self._ready if s.returncode is None]
            if len(self._ready) >= self.size:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._delay_next:
                self._delay_next = False
                await asyncio.sleep(self._refill_delay_s)
            try:
                sb = await self._spawn()
            except StandbyError as e:
                log.warning("standby failed to start: %s", e)
                await asyncio.sleep(self._retry_backoff_s)
                continue
            self._ready.append(sb)

    def _run_dir(self) -> Path:
        run_dir = self.home / "warmpool"
        run_dir.mkdir(parents=True, exist_ok=True)
        # A unix socket path has at most 107 bytes; a deep home gets a short private dir.
        if len(str(run_dir)) > 60:
            if self._short_dir is None:
                self._short_dir = Path(tempfile.mkdtemp(prefix="torpor-wp-"))
            return self._short_dir
        return run_dir

    async def _spawn(self) -> StandbyProcess:
        self._seq += 1
        run_dir = self._run_dir()
        name = f"standby-{os.getpid()}-{self._seq}"
        sock_path = run_dir / f"{name}.sock"
        log_path = self.home / "warmpool" / f"{name}.log"
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        with log_path.open("ab") as logfile:
            proc = await asyncio.create_subprocess_exec(
                *self._command,
                "--socket",
                str(sock_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
            )
        sb = StandbyProcess(proc, sock_path, log_path)
        self._starting = sb
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._ready_timeout_s
            while not sb.socket_path.exists():
                if proc.returncode is not None:
                    raise StandbyError(f"standby exited with {proc.returncode}; see {log_path}")
                if loop.time() > deadline:
                    await _stop(sb)
                    raise StandbyError(f"standby not ready in {self._ready_timeout_s}s")
                await asyncio.sleep(0.05)
        except BaseException:
            if proc.returncode is None and not self._closed:
                await _stop(sb)
            raise
        finally:
            self._starting = None
        return sb


async def _stop(sb: StandbyProcess, grace_s: float = 5.0) -> None:
    if sb.returncode is None:
        sb.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(sb.wait(), grace_s)
        except TimeoutError:
            sb.signal(signal.SIGKILL)
            await sb.wait()
    with contextlib.suppress(FileNotFoundError):
        sb.socket_path.unlink()


class WarmPoolLauncher:
    """A ``Launcher``: starts a replica from a standby when one is ready, else via `fallback`."""

    def __init__(self, pool: WarmPool, fallback: Launcher) -> None:
        self.pool = pool
        self.fallback = fallback

    async def launch(self, request: LaunchRequest) -> ReplicaHandle:
        sb = await self.pool.take()
        if sb is None:
            return await self.fallback.launch(request)
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with request.log_path.open("ab") as logfile:
                await sb.assign(request.args, request.env, logfile.fileno(), logfile.fileno())
        except (StandbyError, OSError, TimeoutError) as e:
            log.warning(
                "warm standby %s could not take the replica (%s); starting plainly", sb.pid, e
            )
            await _stop(sb)
            return await self.fallback.launch(request)
        return sb
