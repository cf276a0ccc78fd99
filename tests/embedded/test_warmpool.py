import asyncio
import json
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from embedded.local_actuator import LaunchRequest, ReplicaHandle
from embedded.warmpool import WarmPool, WarmPoolLauncher
from tests.autoscaler.fakes import revision

REPO = Path(__file__).resolve().parents[2]
FAKE = (sys.executable, "-m", "tests.embedded.fake_standby")


def pool(tmp_path: Path, size: int = 1, **kw: float) -> WarmPool:
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO))
    return WarmPool(size, tmp_path, command=FAKE, env=env, **kw)  # type: ignore[arg-type]


def launch_request(args: tuple[str, ...], env: Mapping[str, str], log_path: Path) -> LaunchRequest:
    return LaunchRequest(revision(), "r", "127.0.0.1", 9, 0.0, args, env, log_path)


@dataclass
class FallbackFake:
    requests: list[LaunchRequest] = field(default_factory=list)

    async def launch(self, request: LaunchRequest) -> ReplicaHandle:
        self.requests.append(request)
        raise RuntimeError("fallback used")


def first_line(path: Path) -> str | None:
    text = path.read_text() if path.exists() else ""
    return text.splitlines()[0] if text.strip() else None


async def read_json_line(path: Path) -> dict[str, object]:
    for _ in range(200):
        line = first_line(path)
        if line:
            return dict(json.loads(line))
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing written to {path}")


async def test_take_assign_and_refill(tmp_path: Path) -> None:
    p = pool(tmp_path, refill_delay_s=0.0)
    try:
        await asyncio.wait_for(p.wait_ready(), 60)
        sb = await p.take()
        assert sb is not None
        log = tmp_path / "replica.log"
        with log.open("ab") as f:
            pid = await sb.assign(["--model", "m"], {"X": "1"}, f.fileno(), f.fileno())
        assert pid == sb.pid
        assert await read_json_line(log) == {"argv": ["--model", "m"], "x": "1"}
        await asyncio.wait_for(p.wait_ready(), 60)  # refilled in the background
        assert p.ready_count == 1
        sb.signal(signal.SIGTERM)
        assert await asyncio.wait_for(sb.wait(), 10) != 0
    finally:
        await p.aclose()
    assert p.ready_count == 0


async def test_take_on_an_empty_pool_returns_none_at_once(tmp_path: Path) -> None:
    p = pool(tmp_path, size=0)
    try:
        assert await p.take() is None
    finally:
        await p.aclose()


async def test_aclose_stops_standbys(tmp_path: Path) -> None:
    p = pool(tmp_path, size=2, refill_delay_s=0.0)
    await asyncio.wait_for(p.wait_ready(), 60)
    standbys = list(p._ready)
    await p.aclose()
    assert all(s.returncode is not None for s in standbys)
    assert not any(s.socket_path.exists() for s in standbys)


async def test_launcher_uses_a_standby_then_falls_back(tmp_path: Path) -> None:
    p = pool(tmp_path, refill_delay_s=3600)
    fallback = FallbackFake()
    launcher = WarmPoolLauncher(p, fallback)
    try:
        await asyncio.wait_for(p.wait_ready(), 60)
        log = tmp_path / "logs" / "r1.log"
        handle = await launcher.launch(launch_request(("--port", "9"), {"X": "2"}, log))
        assert await read_json_line(log) == {"argv": ["--port", "9"], "x": "2"}
        assert handle.returncode is None
        handle.signal(signal.SIGKILL)
        await asyncio.wait_for(handle.wait(), 10)
        with pytest.raises(RuntimeError, match="fallback used"):
            await launcher.launch(launch_request(("--port", "10"), {}, tmp_path / "r2.log"))
        assert [r.args for r in fallback.requests] == [("--port", "10")]
    finally:
        await p.aclose()


async def test_a_dead_standby_is_not_handed_out(tmp_path: Path) -> None:
    p = pool(tmp_path, refill_delay_s=3600)
    try:
        await asyncio.wait_for(p.wait_ready(), 60)
        sb = p._ready[0]
        sb.signal(signal.SIGKILL)
        await sb.wait()
        assert await p.take() is None
    finally:
        await p.aclose()
