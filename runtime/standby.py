"""`python -m runtime standby --socket PATH`: a runtime that has paid for its imports and waits.

The socket protocol is part 4 of the runtime process contract (`runtime.contract`): the standby
imports vLLM/torch and applies the fork trick, binds PATH (under a temporary name, then renamed),
takes one `StandbyAssignment` with 0 or 2 log fds, answers a `StandbyReply`, and from then on is
that replica, exactly as `serve` with "warm": true in its reports.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.contract import (
    MAX_STANDBY_MESSAGE,
    STANDBY_FD_COUNTS,
    ContractError,
    StandbyAssignment,
    StandbyReady,
    StandbyReply,
)


@dataclass(frozen=True)
class Assignment:
    """A `StandbyAssignment` as received: with its file descriptors and when it came."""

    argv: tuple[str, ...]
    env: dict[str, str]
    fds: tuple[int, ...]
    received_at: float


def parse_assignment(raw: bytes, fds: list[int], received_at: float) -> Assignment:
    """`ContractError` for a message or a number of fds the contract does not allow."""
    msg = StandbyAssignment.parse(raw)
    if len(fds) not in STANDBY_FD_COUNTS:
        raise ContractError("assignment carries 0 or 2 file descriptors (stdout, stderr)")
    return Assignment(msg.argv, dict(msg.env), tuple(fds), received_at)


def listen(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp))
    sock.listen(1)
    os.replace(tmp, path)
    return sock


def wait_for_assignment(sock: socket.socket, path: Path) -> tuple[socket.socket, Assignment] | None:
    """Block until the pool assigns this standby; None when the pool closes the connection."""
    conn, _ = sock.accept()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # one assignment per standby: nobody else may connect
    sock.close()
    buf = b""
    fds: list[int] = []
    while b"\n" not in buf:
        data, more_fds, _flags, _addr = socket.recv_fds(conn, MAX_STANDBY_MESSAGE, 2)
        fds.extend(more_fds)
        if not data:
            conn.close()
            for fd in fds:
                os.close(fd)
            return None
        buf += data
    try:
        return conn, parse_assignment(buf.split(b"\n", 1)[0], fds, time.time())
    except ContractError as e:
        # The pool hears why (StandbyError) instead of a closed connection; nothing is kept.
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            conn.sendall(StandbyReply(accepted=False, error=str(e)).encode())
        conn.close()
        raise


def _die_with_parent(sig: int) -> None:
    """Linux: have the kernel signal us when the pool's process goes (0 clears it).

    A standby whose pool died would otherwise wait on its socket forever; an assigned replica
    outlives its launcher's hiccups like any other replica, so it clears this again.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG


def standby_main(argv: list[str]) -> int:
    from runtime.phases import PhaseRecorder, process_start_time

    p = argparse.ArgumentParser(prog="python -m runtime standby")
    p.add_argument("--socket", type=Path, required=True)
    ns = p.parse_args(argv)
    started = process_start_time()

    from runtime.launch import _configure_logging, choose_engine_path, prepare_environment, run

    prepare_environment(os.environ)
    _configure_logging()
    choose_engine_path(os.environ, None)  # before vLLM is imported: its plugin reads the result
    from runtime.engine import enable_fork_engine, import_engine

    import_engine()
    enable_fork_engine()
    import signal

    _die_with_parent(signal.SIGTERM)
    if os.getppid() == 1:
        return 0  # the pool went before the death signal was armed
    sock = listen(ns.socket)
    print(StandbyReady(os.getpid(), round(time.time() - started, 3)).encode(), flush=True)
    try:
        got = wait_for_assignment(sock, ns.socket)
    except ContractError as e:
        print(f"torpor runtime: {e}", file=sys.stderr, flush=True)
        return 2
    if got is None:
        return 0
    conn, assignment = got
    _die_with_parent(0)
    sys.stdout.flush()
    sys.stderr.flush()
    if assignment.fds:
        # From here on this process writes where the replica's launcher reads.
        os.dup2(assignment.fds[0], 1)
        os.dup2(assignment.fds[1], 2)
        for fd in assignment.fds:
            os.close(fd)
    os.environ.update(assignment.env)
    from runtime.args import parse_launch_args
    from runtime.gate import take_platform_token

    try:
        token = take_platform_token(os.environ)  # before anything could inherit it
        cfg = parse_launch_args(list(assignment.argv), os.environ)
        cfg = dataclasses.replace(cfg, platform_token=token)
    except ContractError as e:
        conn.sendall(StandbyReply(accepted=False, error=str(e)).encode())
        conn.close()
        print(f"torpor runtime: {e}", file=sys.stderr, flush=True)
        return 2
    conn.sendall(StandbyReply(accepted=True, pid=os.getpid()).encode())
    conn.close()
    prepare_environment(os.environ, cfg)  # the assignment's env may have brought its own settings
    from runtime.cpu_engine import EngineUnavailable

    try:
        engine = choose_engine_path(os.environ, cfg)
    except EngineUnavailable as e:  # now, not at the first request
        print(f"torpor runtime: {e}", file=sys.stderr, flush=True)
        return 1
    recorder = PhaseRecorder(replica_id=cfg.replica_id,
                             launched_at=cfg.launched_at or assignment.received_at, warm=True,
                             labels=cfg.identity.labels(), engine=engine)
    # For this replica the process "starts" when assigned; its imports were already done.
    recorder.mark("process_started", at=assignment.received_at)
    recorder.mark("imports_done", at=assignment.received_at)
    return run(cfg, recorder)
