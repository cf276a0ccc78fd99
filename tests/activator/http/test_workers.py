"""Several activator workers on one port (``python -m activator --workers N``) over a real Redis.

The supervisor and its workers are the real entry point in subprocesses; the replica is a small
ASGI app served in the test's own loop, published on the bus the way the autoscaler would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from activator.http.workers import (
    FIRST_RESTART_DELAY_S,
    MAX_RESTART_DELAY_S,
    STABLE_AFTER_S,
    bind_listeners,
    restart_delay,
)
from harness.ports import free_port
from harness.redis_server import RedisServer
from tests.activator.conftest import endpoints, serve, service
from torpor.bus.redis import RedisBus

_START_TIMEOUT_S = 30.0


@pytest.mark.parametrize(
    ("previous_s", "ran_s", "expected_s"),
    [
        (0.0, 0.5, FIRST_RESTART_DELAY_S),  # first death: restart soon
        (FIRST_RESTART_DELAY_S, 0.5, 2 * FIRST_RESTART_DELAY_S),  # died again at once: back off
        (0.8, 1.0, 1.6),
        (MAX_RESTART_DELAY_S, 1.0, MAX_RESTART_DELAY_S),  # capped
        (MAX_RESTART_DELAY_S, STABLE_AFTER_S, FIRST_RESTART_DELAY_S),  # it had been up a while
    ],
)
def test_restart_delay(previous_s: float, ran_s: float, expected_s: float) -> None:
    assert restart_delay(previous_s, ran_s) == pytest.approx(expected_s)


def test_listeners_share_one_port_chosen_by_the_kernel() -> None:
    sockets = bind_listeners("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1 and 0 not in ports
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)
        with socket.create_connection(("127.0.0.1", ports.pop()), timeout=2):
            pass  # listening already, before any worker exists: connections wait in a backlog
    finally:
        for s in sockets:
            s.close()


# ---- the real entry point -----------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(c) for c in text.split()}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@dataclass
class Activators:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ids(self, connections: int) -> list[str]:
        """The activator id behind each of ``connections`` fresh connections."""
        seen = []
        for _ in range(connections):
            # A new client per call: a new connection, which the kernel may hash to any worker.
            seen.append(httpx.get(f"{self.url}/healthz", timeout=5).json()["activator"])
        return seen

    def wait_serving(self, ids: set[str]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if set(self.ids(20)) == ids:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{ids} did not all answer in time:\n{self.log.read_text()}")


def _start(redis_url: str, workers: int, tmp_path: Path) -> Activators:
    port = free_port()
    log = tmp_path / "activator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "activator",
                "--bus", redis_url,
                "--host", "127.0.0.1",
                "--port", str(port),
                "--id", "act",
                "--workers", str(workers),
                "--drain-timeout", "20",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Activators(proc, port, log)


@pytest.fixture
def two_workers(redis_server: RedisServer, tmp_path: Path) -> Iterator[Activators]:
    activators = _start(redis_server.url, 2, tmp_path)
    try:
        activators.wait_serving({"act-0", "act-1"})
        yield activators
    finally:
        activators.proc.terminate()
        activators.proc.wait(timeout=30)


@pytest.mark.redis
def test_one_worker_is_the_activator_itself(redis_server: RedisServer, tmp_path: Path) -> None:
    activators = _start(redis_server.url, 1, tmp_path)
    try:
        activators.wait_serving({"act"})
        assert _children(activators.proc.pid) == set()
    finally:
        activators.proc.terminate()
        activators.proc.wait(timeout=30)


@pytest.mark.redis
def test_two_workers_both_serve_on_one_port(two_workers: Activators) -> None:
    assert len(_children(two_workers.proc.pid)) == 2
    ids = two_workers.ids(64)
    assert set(ids) == {"act-0", "act-1"}


@pytest.mark.redis
def test_a_killed_worker_is_restarted(two_workers: Activators) -> None:
    before = _children(two_workers.proc.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        now = _children(two_workers.proc.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"worker {victim} was not replaced:\n{two_workers.log.read_text()}")
    assert before - now == {victim}
    two_workers.wait_serving({"act-0", "act-1"})
    assert f"(pid {victim}) exited unexpectedly with code -9" in two_workers.log.read_text()


@pytest.mark.redis
async def test_sigterm_drains_every_worker_and_ends_them_all(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def slow_replica(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        arrived.set()
        await release.wait()
        body = b'{"answer": "after the drain began"}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    chat = service()
    bus = await RedisBus.connect(redis_server.url)
    try:
        async with serve(slow_replica) as replica_url:
            await bus.publish_services([chat])
            await bus.publish_endpoints(endpoints(chat.revisions[0].ref.key, replica_url))
            activators = _start(redis_server.url, 2, tmp_path)
            try:
                await asyncio.to_thread(activators.wait_serving, {"act-0", "act-1"})
                workers = _children(activators.proc.pid)
                async with httpx.AsyncClient(timeout=30) as client:
                    call = asyncio.create_task(client.get(f"{activators.url}/default/chat/score"))
                    await asyncio.wait_for(arrived.wait(), 10)

                    activators.proc.send_signal(signal.SIGTERM)
                    # Every worker has stopped listening (none accepts a new connection)...
                    deadline = time.monotonic() + 10
                    while _accepts(activators.port):
                        assert time.monotonic() < deadline, "still listening after SIGTERM"
                        await asyncio.sleep(0.02)
                    # ...yet the request it was forwarding still gets its answer.
                    release.set()
                    answer = await call
                assert answer.status_code == 200
                assert answer.json() == {"answer": "after the drain began"}
                code = await asyncio.to_thread(activators.proc.wait, 30)
            finally:
                if activators.proc.poll() is None:
                    activators.proc.kill()
                    activators.proc.wait()
    finally:
        await bus.aclose()
    assert code == 0, activators.log.read_text()
    assert all(_gone(pid) for pid in workers)
    log = activators.log.read_text()
    assert "SIGTERM: stopping 2 activator workers" in log
    assert "unexpectedly" not in log


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
