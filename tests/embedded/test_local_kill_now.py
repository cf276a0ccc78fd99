"""``LocalActuator.kill_now``: the synchronous last resort when the platform exits at once."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from autoscaler.actuator import Phase
from embedded.local_actuator import LocalActuator
from tests.autoscaler.fakes import eventually
from tests.embedded.test_local import FAKE_RUNTIME, KEY, only, pid_alive, with_model


async def test_kill_now_reaches_every_group_even_one_being_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_CHILD_PIDFILE", str(pidfile))
    a = LocalActuator(home=tmp_path, command=(sys.executable, str(FAKE_RUNTIME)), stop_timeout_s=30)
    try:
        stubborn = with_model("stubborn")  # ignores SIGTERM: a stop would wait out its bound
        await a.start(stubborn, 1)
        await eventually(lambda: only(a).phase is Phase.READY, bound_s=30)
        leader = only(a)
        await a.start(with_model("with-child"), 1)
        await eventually(lambda: pidfile.exists(), bound_s=30)
        child = int(pidfile.read_text())
        # A stop in progress has taken the replica out of the actuator's table already.
        stopping = asyncio.create_task(a.stop(stubborn, leader.replica_id))
        await eventually(lambda: leader.replica_id not in {r.replica_id for r in a.replicas(KEY)})
        a.kill_now()
        await eventually(lambda: not pid_alive(child), bound_s=10)
        await asyncio.wait_for(stopping, 10)  # the stubborn one died of SIGKILL, not the bound
    finally:
        await a.aclose()


def replica_pid(replica_id: str) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if f"\0--replica-id\0{replica_id}\0".encode() in cmd:
                return int(entry)
    raise AssertionError(f"no process for {replica_id}")


async def test_a_cancelled_stop_still_kills_the_replica(tmp_path: Path) -> None:
    a = LocalActuator(home=tmp_path, command=(sys.executable, str(FAKE_RUNTIME)), stop_timeout_s=30)
    try:
        stubborn = with_model("stubborn")  # ignores SIGTERM, as vLLM does while starting
        await a.start(stubborn, 1)
        await eventually(lambda: only(a).phase is Phase.READY, bound_s=30)
        replica = only(a)
        pid = replica_pid(replica.replica_id)
        stopping = asyncio.create_task(a.stop(stubborn, replica.replica_id))
        await eventually(lambda: a.replicas(KEY) == [])
        await asyncio.sleep(0.1)  # SIGTERM sent and ignored
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        await eventually(lambda: not pid_alive(pid), bound_s=10)
    finally:
        await a.aclose()
