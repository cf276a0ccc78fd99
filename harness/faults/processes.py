"""The platform's replica processes, found from /proc: to kill them, and to find orphans.

Each runtime process leads its own process group (vLLM's engine core is in it), so a group is what
a fault kills and what must be gone after the platform stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return b""


def _pgid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Fields after the ")" that closes the command name (which may hold spaces): state, ppid, pgrp.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return None if fields[0] == b"Z" else int(fields[2])


def replica_pids(home: Path, revision: str | None = None) -> list[int]:
    """Runtime processes started for ``home`` (optionally of one revision, by replica id)."""
    needle = str(home).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        cmd = _cmdline(int(entry))
        if b" -m runtime " not in cmd or needle not in cmd:
            continue
        if revision is not None and f"--replica-id {revision}-".encode() not in cmd:
            continue
        pids.append(int(entry))
    return pids


def replica_groups(home: Path, revision: str | None = None) -> set[int]:
    """Process groups of the replicas: each runtime process leads its own (vLLM's child too)."""
    return {g for pid in replica_pids(home, revision) if (g := _pgid(pid)) is not None}


def _started(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rindex(b")") + 2 :].split()[19])  # field 22: start time, in ticks


def oldest_replica_group(home: Path, revision: str) -> set[int]:
    """The process group of the revision's longest-running replica: the one serving."""
    pids = sorted(replica_pids(home, revision), key=_started)
    group = _pgid(pids[0]) if pids else None
    return {group} if group is not None else set()


def group_members(groups: set[int]) -> list[int]:
    """Live processes in any of ``groups``."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _pgid(int(e)) in groups]


async def survivors(groups: set[int], grace_s: float = 5.0) -> list[int]:
    """Members of ``groups`` still alive ``grace_s`` after their platform exited.

    A process SIGKILLed a moment ago may still be tearing down its memory (or waiting to be
    reaped by init, having lost its parent): only one that outlasts the grace is an orphan.
    """
    deadline = time.monotonic() + grace_s
    while (alive := group_members(groups)) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    return alive


def describe(pids: list[int]) -> list[str]:
    return [f"{pid}: {_cmdline(pid)[:160].decode(errors='replace')}" for pid in pids]


def kill_groups(groups: set[int]) -> None:
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGKILL)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def listening_pid(port: int) -> int | None:
    """The process that listens on loopback TCP ``port``: a replica, whoever launched it.

    (A replica adopted from the warm pool keeps its standby command line, with no replica id in
    it, so the address the platform publishes is the one sure way to find it.) Children that
    inherited the socket share it; the group leader among the holders is the replica.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    targets = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                        holders.append(int(entry))
                        break
    found = [pid for pid in holders if _pgid(pid) == pid] or holders
    return found[0] if found else None


def engine_pids(replica: int) -> list[int]:
    """vLLM's engine core under the replica process ``replica`` (titled ``VLLM::EngineCore``).

    Killing only it leaves an API server that still answers, with a dead engine behind it
    (issue 13 item 9).
    """
    children = [int(e) for e in os.listdir("/proc") if e.isdigit() and _ppid(int(e)) == replica]
    titled = [pid for pid in children if b"EngineCore" in _cmdline(pid)]
    return titled or children


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def signal_groups(groups: set[int], sig: signal.Signals) -> None:
    """``sig`` to every process of ``groups`` (SIGSTOP freezes a replica, SIGCONT thaws it)."""
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, sig)
