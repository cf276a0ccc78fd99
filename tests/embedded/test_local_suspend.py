"""The local actuator's suspend and resume against the fake runtime process (no vLLM): the whole
process group is stopped (the child standing in for vLLM's engine core included), woken, and a
suspended replica still stops at once. Bad requests are refused with a typed error."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from autoscaler.actuator import Phase
from embedded.local_actuator import LocalActuator, ReplicaHandle
from tests.autoscaler.fakes import eventually
from tests.embedded.test_local import FAKE_RUNTIME, KEY, only, pid_alive, with_model


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture
async def actuator(tmp_path: Path) -> AsyncIterator[LocalActuator]:
    a = LocalActuator(
        home=tmp_path,
        command=(sys.executable, str(FAKE_RUNTIME)),
        ready_timeout_s=30,
        stop_timeout_s=5,
    )
    yield a
    await a.aclose()


async def test_suspend_stops_the_whole_group_and_resume_wakes_it(
    actuator: LocalActuator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_CHILD_PIDFILE", str(pidfile))
    rev = with_model("with-child")
    await actuator.start(rev, 1)
    await eventually(lambda: only(actuator).phase is Phase.READY, bound_s=30)
    replica = only(actuator)
    assert replica.url is not None
    child = int(pidfile.read_text())
    leader = os.getpgid(child)
    assert leader != os.getpgid(0)

    await actuator.suspend(rev, replica.replica_id)
    suspended = only(actuator)
    assert suspended.phase is Phase.SUSPENDED and suspended.suspended_at is not None
    # SIGSTOP is delivered asynchronously: both processes reach the stopped state.
    await eventually(lambda: state(leader) == "T" and state(child) == "T")

    await actuator.resume(rev, replica.replica_id)
    woken = only(actuator)
    assert woken.phase is Phase.READY and woken.suspended_at is None
    assert state(child) != "T"
    async with httpx.AsyncClient() as client:
        assert (await client.get(replica.url + "/health")).status_code == 200


async def test_a_suspended_replica_stops_without_waiting_for_the_kill(
    actuator: LocalActuator,
) -> None:
    rev = with_model("m")
    await actuator.start(rev, 1)
    await eventually(lambda: only(actuator).phase is Phase.READY, bound_s=30)
    replica = only(actuator)
    await actuator.suspend(rev, replica.replica_id)
    began = time.monotonic()
    await actuator.stop(rev, replica.replica_id)
    # SIGCONT after SIGTERM: it handles the SIGTERM rather than sit out stop_timeout_s (5 s).
    assert time.monotonic() - began < 5
    assert actuator.replicas(KEY) == []


async def test_resume_of_a_replica_that_never_answers_marks_it_failed(tmp_path: Path) -> None:
    # A freezer whose thaw does nothing: the replica stays frozen, as a hung one would.
    a = LocalActuator(
        home=tmp_path,
        command=(sys.executable, str(FAKE_RUNTIME)),
        wake_timeout_s=0.3,
        freezer=_StaysFrozen(),
    )
    try:
        rev = with_model("m")
        await a.start(rev, 1)
        await eventually(lambda: only(a).phase is Phase.READY, bound_s=30)
        replica = only(a)
        await a.suspend(rev, replica.replica_id)
        await a.resume(rev, replica.replica_id)
        failed = only(a)
        assert failed.phase is Phase.FAILED and "after waking" in (failed.error or "")
    finally:
        await a.aclose()


class _StaysFrozen:
    async def freeze(self, handle: ReplicaHandle, url: str) -> None:
        handle.signal(signal.SIGSTOP)

    async def thaw(self, handle: ReplicaHandle, url: str) -> None:
        return None


async def test_bad_requests_are_refused_and_change_nothing(actuator: LocalActuator) -> None:
    rev = with_model("m")
    with pytest.raises(LookupError):
        await actuator.suspend(rev, "no-such-replica")
    await actuator.start(rev, 1)
    await eventually(lambda: only(actuator).phase is Phase.READY, bound_s=30)
    replica = only(actuator)
    with pytest.raises(ValueError, match="not suspended"):
        await actuator.resume(rev, replica.replica_id)
    assert only(actuator) == replica
    assert pid_alive(os.getpid())


def test_an_unknown_suspend_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="suspend_mode"):
        LocalActuator(home=tmp_path, suspend_mode="hibernate")
