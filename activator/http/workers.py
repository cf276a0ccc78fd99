"""Several activator processes on one port: one listening socket per worker, kernel-balanced.

One Python process saturates one core at about ten thousand small requests a second, so a node
that should carry more runs several activator workers. The supervisor binds one listening socket
per worker with ``SO_REUSEPORT`` (the kernel spreads new connections across the sockets of one
port) and hands each worker its socket as an inherited file descriptor. Each worker is a whole
activator: its own bus connection, its own id, its own queues and stats, which add up on the bus
the way several activator pods' do.

The supervisor keeps its copy of every socket while it runs, so a worker that dies leaves its
socket listening: connections the kernel hashes to it wait in its backlog until the replacement
worker, restarted after a short backoff, accepts them, instead of being reset. SIGTERM or SIGINT
closes the supervisor's copies (so the kernel stops queueing on them once the workers close
theirs), is forwarded to every worker, each of which drains as a single activator does
(uvicorn's graceful shutdown), and the supervisor returns when all of them have exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence

import uvicorn

log = logging.getLogger("torpor.activator.workers")

# A worker that ran this long before dying counts as having worked: the next restart is quick.
STABLE_AFTER_S = 30.0
FIRST_RESTART_DELAY_S = 0.1
MAX_RESTART_DELAY_S = 5.0
_ORPHAN_CHECK_S = 1.0

# argv of worker ``k`` given the number of its inherited listening socket's file descriptor.
WorkerCommand = Callable[[int, int], Sequence[str]]


def restart_delay(previous_delay_s: float, ran_s: float) -> float:
    """Seconds to wait before restarting a worker that ran ``ran_s`` and died.

    Short after a worker that had been up a while (or the first time); doubling, up to a cap,
    while restarts keep dying quickly, so a worker that cannot start (bus unreachable, bad
    settings) does not spin a core.
    """
    if previous_delay_s <= 0.0 or ran_s >= STABLE_AFTER_S:
        return FIRST_RESTART_DELAY_S
    return min(previous_delay_s * 2.0, MAX_RESTART_DELAY_S)


def bind_listeners(host: str, port: int, count: int, backlog: int = 4096) -> list[socket.socket]:
    """``count`` listening TCP sockets on one address, each with ``SO_REUSEPORT``.

    With ``port`` 0 the first socket gets a port from the kernel and the others share it.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(backlog)
            # The first bind may have chosen the port; the rest join it.
            address = sock.getsockname()
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Supervisor:
    """Keeps one worker process per listening socket running until told to stop."""

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        command: WorkerCommand,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not sockets:
            raise ValueError("a supervisor needs at least one socket")
        self._sockets = list(sockets)
        self._command = command
        self._env = dict(env) if env is not None else None
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._signal = signal.SIGTERM

    async def run(self) -> int:
        """Run the workers until SIGTERM or SIGINT and they have all exited; returns 0."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        try:
            await asyncio.gather(*(self._keep(k) for k in range(len(self._sockets))))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self._close_sockets()
        return 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Forward ``sig`` to every worker; the first call also stops restarts and listening."""
        if not self._stopping.is_set():
            self._signal = signal.Signals(sig)
            log.info("%s: stopping %d activator workers", self._signal.name, len(self._procs))
            self._stopping.set()
            self._close_sockets()
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values()]

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()

    async def _keep(self, k: int) -> None:
        fd = self._sockets[k].fileno()
        delay = 0.0
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self._command(k, fd), pass_fds=(fd,), env=self._env
            )
            self._procs[k] = proc
            if self._stopping.is_set():  # the signal came while this worker was being started
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self._signal)
            code = await proc.wait()
            del self._procs[k]
            if self._stopping.is_set():
                log.info("activator worker %d (pid %d) exited with code %d", k, proc.pid, code)
                return
            delay = restart_delay(delay, time.monotonic() - started)
            log.warning(
                "activator worker %d (pid %d) exited unexpectedly with code %d; "
                "restarting it in %.1f s",
                k,
                proc.pid,
                code,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)


def run_workers(
    sockets: Sequence[socket.socket],
    command: WorkerCommand,
    env: Mapping[str, str] | None = None,
) -> int:
    """Supervise workers in this process until they are all done (see ``Supervisor``)."""

    async def main() -> int:
        return await Supervisor(sockets, command, env).run()

    return asyncio.run(main())


async def exit_when_orphaned(server: uvicorn.Server, interval_s: float = _ORPHAN_CHECK_S) -> None:
    """In a worker: shut ``server`` down gracefully if the supervisor goes away without a word.

    A supervisor killed outright (SIGKILL, a crash) cannot forward anything; its workers would
    serve on unattended. Once the parent changes (the worker was re-parented), drain and exit.
    """
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - a parent's death sends its children nothing
        await asyncio.sleep(interval_s)
    log.warning("activator supervisor (pid %d) is gone; shutting this worker down", parent)
    server.should_exit = True
