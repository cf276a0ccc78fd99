"""The local actuator against a tiny fake runtime process (no vLLM)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from autoscaler.actuator import Phase, Replica
from autoscaler.scrape import HttpScraper
from embedded.local_actuator import (
    LocalActuator,
    free_port,
    local_model_path,
    parse_startup_line,
    replica_env,
    runtime_args,
)
from runtime.contract import ServeArgs
from tests.autoscaler.fakes import eventually, revision
from torpor.manifest.env import expand
from torpor.spec import LivenessProbe, RevisionSpec, RuntimeSpec
from torpor.status import ColdStart

FAKE_RUNTIME = Path(__file__).resolve().parent / "fake_runtime.py"
KEY = "default/chat-00001"


def with_model(model: str, **runtime: object) -> RevisionSpec:
    rev = revision()
    return replace(rev, runtime=replace(rev.runtime, model=model, **runtime))  # type: ignore[arg-type]


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


def only(a: LocalActuator) -> Replica:
    (r,) = a.replicas(KEY)
    return r


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


# -- pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("$(TORPOR_HOME)/models/tiny", "/srv/torpor/models/tiny"),
        ("$(UNKNOWN)/x", "$(UNKNOWN)/x"),
        ("$$(TORPOR_HOME)", "$(TORPOR_HOME)"),
        ("a$$b", "a$b"),
        ("$(A)$(B)", "12"),
        ("plain", "plain"),
    ],
)
def test_expand_vars_like_kubernetes(text: str, want: str) -> None:
    env = {"TORPOR_HOME": "/srv/torpor", "A": "1", "B": "2"}
    assert expand(text, env) == want


def test_env_values_may_refer_to_earlier_ones(tmp_path: Path) -> None:
    rev = with_model("m", env=(("CACHE", "$(TORPOR_HOME)/cache"), ("X", "$(CACHE)/x")))
    env = replica_env(rev, tmp_path, {"PATH": "/bin"})
    assert env["TORPOR_HOME"] == str(tmp_path)
    assert env["X"] == f"{tmp_path}/cache/x"
    assert env["PATH"] == "/bin"


def test_runtime_args_follow_the_contract() -> None:
    rev = with_model(
        "$(TORPOR_HOME)/models/tiny",
        served_model_name="tiny",
        engine_args=("--max-model-len", "$(LEN)"),
    )
    args = runtime_args(
        rev,
        {"TORPOR_HOME": "/h", "LEN": "512"},
        host="127.0.0.1",
        port=4000,
        replica_id="r1",
        launched_at=12.5,
        drain_timeout_s=9.0,
    )
    assert ServeArgs.parse(args) == ServeArgs(
        model="/h/models/tiny",
        host="127.0.0.1",
        port=4000,
        served_model_name="tiny",
        replica_id="r1",
        launched_at=12.5,
        drain_timeout_s=9.0,
        engine_args=("--max-model-len", "512"),
    )
    assert args[-2:] == ["--max-model-len", "512"]  # vLLM's, last and in order


@pytest.mark.parametrize(
    ("model", "want"),
    [
        ("/models/tiny-llama", "/h/models/tiny-llama"),
        ("file:///models/tiny-llama", "/h/models/tiny-llama"),
        ("/models", "/h/models"),
        ("/modelsx/tiny", "/modelsx/tiny"),
        ("/srv/tiny", "/srv/tiny"),
        ("file:///srv/tiny", "file:///srv/tiny"),
    ],
)
def test_the_pod_models_mount_is_the_homes_models_dir(model: str, want: str) -> None:
    assert local_model_path(model, Path("/h")) == want
    args = runtime_args(
        with_model(model), {"TORPOR_HOME": "/h"}, host="h", port=1, replica_id="r", launched_at=1.0
    )
    assert ServeArgs.parse(args).model == want


def test_startup_line_becomes_cold_start_phases() -> None:
    fallback = ColdStart("r1", started_at=10.0, total_s=5.0)
    log = (
        "INFO loading\n"
        '{"event": "startup", "replica_id": "r1", "launched_at": 10.0, "warm": true, '
        '"phases": {"process_started": 0.1, "imports_done": 2.0, "engine_ready": 4.5}}\n'
        "INFO serving\n"
    )
    cs = parse_startup_line(log, fallback)
    assert cs is not None
    assert cs.phases == (("process_started", 0.1), ("imports_done", 2.0), ("engine_ready", 4.5))
    assert cs.warm and cs.total_s == 5.0 and cs.engine is None
    assert parse_startup_line("no line here\n{not json", fallback) is None


def test_startup_line_carries_the_engine_path() -> None:
    line = ('{"event": "startup", "replica_id": "r1", "launched_at": 10.0, "warm": false, '
            '"phases": {}, "engine": "cpu attention=vec (torch reports no AMX tiles)"}')
    cs = parse_startup_line(line, ColdStart("r1", started_at=10.0, total_s=5.0))
    assert cs is not None and cs.engine == "cpu attention=vec (torch reports no AMX tiles)"


# -- processes -----------------------------------------------------------------------------------


async def test_replica_becomes_ready_serves_metrics_and_stops(
    actuator: LocalActuator, tmp_path: Path
) -> None:
    rev = with_model("$(TORPOR_HOME)/models/tiny")
    await actuator.start(rev, 1)
    assert only(actuator).phase is Phase.STARTING
    await eventually(lambda: only(actuator).phase is Phase.READY, bound_s=30)
    r = only(actuator)
    assert r.url is not None and r.ready_at is not None
    async with httpx.AsyncClient() as client:
        assert (await client.get(r.url + "/health")).status_code == 200
    scraper = HttpScraper()
    try:
        load = await scraper.scrape(r.replica_id, r.url)
    finally:
        await scraper.aclose()
    assert load is not None and (load.running, load.waiting, load.kv_cache_usage) == (1, 0, 0.25)
    await eventually(
        lambda: only(actuator).cold_start is not None and bool(only(actuator).cold_start.phases)
    )  # type: ignore[union-attr]
    cs = only(actuator).cold_start
    assert cs is not None and cs.replica_id == r.replica_id
    assert [p for p, _ in cs.phases] == ["process_started", "imports_done", "engine_ready"]

    logfile = tmp_path / "logs" / "default" / "chat-00001" / f"{r.replica_id}.log"
    text = logfile.read_text()
    assert f'"{tmp_path}/models/tiny"' in text  # $(TORPOR_HOME) expanded from the replica's env
    await actuator.stop(rev, r.replica_id)
    assert actuator.replicas(KEY) == []
    assert logfile.exists()  # logs outlive the replica


async def test_exit_during_start_up_is_failed_with_code_and_log_tail(
    actuator: LocalActuator,
) -> None:
    rev = with_model("fail")
    await actuator.start(rev, 1)
    await eventually(lambda: only(actuator).phase is Phase.FAILED, bound_s=30)
    error = only(actuator).error or ""
    assert error.startswith("exited with code 3")
    assert "ValueError: no model weights at /nowhere" in error
    # Failed replicas stay listed until the loop stops them.
    await actuator.stop(rev, only(actuator).replica_id)
    assert actuator.replicas(KEY) == []


async def test_not_ready_in_time_is_failed(tmp_path: Path) -> None:
    a = LocalActuator(
        home=tmp_path, command=(sys.executable, str(FAKE_RUNTIME)), ready_timeout_s=1.0
    )
    try:
        await a.start(with_model("never-ready"), 1)
        await eventually(lambda: only(a).phase is Phase.FAILED, bound_s=30)
        assert (only(a).error or "").startswith("not ready after 1s")
    finally:
        await a.aclose()


async def test_stop_kills_the_whole_process_group(
    actuator: LocalActuator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_CHILD_PIDFILE", str(pidfile))
    rev = with_model("with-child")
    await actuator.start(rev, 1)
    await eventually(lambda: only(actuator).phase is Phase.READY, bound_s=30)
    child = int(pidfile.read_text())
    assert pid_alive(child)
    await actuator.stop(rev, only(actuator).replica_id)
    await eventually(lambda: not pid_alive(child))


async def test_sigterm_ignored_is_followed_by_sigkill(tmp_path: Path) -> None:
    a = LocalActuator(
        home=tmp_path, command=(sys.executable, str(FAKE_RUNTIME)), stop_timeout_s=0.5
    )
    try:
        rev = with_model("stubborn")
        await a.start(rev, 1)
        await eventually(lambda: only(a).phase is Phase.READY, bound_s=30)
        await a.stop(rev, only(a).replica_id)
        assert a.replicas(KEY) == []
    finally:
        await a.aclose()


async def test_aclose_stops_every_replica(tmp_path: Path) -> None:
    a = LocalActuator(home=tmp_path, command=(sys.executable, str(FAKE_RUNTIME)))
    await a.start(with_model("m"), 2)
    other = replace(revision("other-00001", "other"), runtime=RuntimeSpec("img", "m"))
    await a.start(other, 1)
    await eventually(
        lambda: all(
            r.phase is Phase.READY for k in (KEY, "default/other-00001") for r in a.replicas(k)
        ),
        bound_s=30,
    )
    urls = [r.url for k in (KEY, "default/other-00001") for r in a.replicas(k)]
    await a.aclose()
    assert a.replicas(KEY) == [] and a.replicas("default/other-00001") == []
    async with httpx.AsyncClient() as client:
        for url in urls:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{url}/health")


async def test_forget_stops_one_revision_only(actuator: LocalActuator) -> None:
    await actuator.start(with_model("m"), 1)
    other = replace(revision("other-00001", "other"), runtime=RuntimeSpec("img", "m"))
    await actuator.start(other, 1)
    await actuator.forget(KEY)
    assert actuator.replicas(KEY) == []
    assert len(actuator.replicas("default/other-00001")) == 1


async def test_a_replica_failing_its_liveness_probe_is_failed_with_the_reason(
    actuator: LocalActuator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sick = tmp_path / "sick"
    monkeypatch.setenv("FAKE_SICK_FILE", str(sick))
    probe = LivenessProbe("/health", period_s=0.05, timeout_s=1.0, failure_threshold=3)
    await actuator.start(with_model("sickens", liveness=probe), 1)
    await eventually(lambda: only(actuator).phase is Phase.READY, bound_s=30)
    await asyncio.sleep(0.3)  # several probes passed
    assert only(actuator).phase is Phase.READY
    sick.touch()
    await eventually(lambda: only(actuator).phase is Phase.FAILED, bound_s=10)
    error = only(actuator).error or ""
    assert error == "liveness probe failed 3 times in a row: GET /health answered 500", error


async def test_a_tcp_socket_probe_passes_while_the_port_accepts(
    actuator: LocalActuator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SICK_FILE", str(tmp_path / "sick"))
    probe = LivenessProbe(None, period_s=0.05, timeout_s=1.0, failure_threshold=1)
    await actuator.start(with_model("sickens", liveness=probe), 1)
    await eventually(lambda: only(actuator).phase is Phase.READY, bound_s=30)
    (tmp_path / "sick").touch()  # /health says 500 now; a tcpSocket probe does not ask it
    await asyncio.sleep(0.3)
    assert only(actuator).phase is Phase.READY
    closed = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    assert "ConnectionRefusedError" in await actuator._probe(closed, probe)


async def test_a_suspended_replica_is_not_probed(
    actuator: LocalActuator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SICK_FILE", str(tmp_path / "sick"))
    probe = LivenessProbe("/health", period_s=0.05, timeout_s=0.2, failure_threshold=2)
    rev = with_model("sickens", liveness=probe)
    await actuator.start(rev, 1)
    await eventually(lambda: only(actuator).phase is Phase.READY, bound_s=30)
    await actuator.suspend(rev, only(actuator).replica_id)
    await asyncio.sleep(1.0)  # a frozen process answers no probe: it would have failed 5 times
    assert only(actuator).phase is Phase.SUSPENDED
    await actuator.resume(rev, only(actuator).replica_id)
    assert only(actuator).phase is Phase.READY
