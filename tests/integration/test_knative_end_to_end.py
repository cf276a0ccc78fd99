"""torpor on "Kubernetes" end to end, from zero and back to zero, with real replicas.

Everything torpor runs is real and in its own process: ``python -m knative`` (the Knative
controller, actuator and loop), ``python -m activator``, ``python -m runtime serve`` replicas of
the tiny Llama on vLLM's CPU build, a real ``redis-server`` as the bus, and the official ``openai``
client. The cluster is imitated by test harnesses: the API emulator
(harness/kube_emulator.py, with its ReplicaSet), Knative Serving's own
reconcilers (``harness/knative_serving.py``: revision readiness, route traffic, SKS status)
and the kubelet (``pod_runner``, which turns pods into runtime processes on loopback addresses).

It shows: the example Service applied, a request through torpor's activator at zero replicas
makes the autoscaler scale the Deployment, the ReplicaSet's pod starts, the request is answered,
the PodAutoscaler's status goes from NoTraffic to Active, and the idle revision returns to zero;
the Revision is Ready at zero before the first request (initial-scale 0) and stays Ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from harness.knative_serving import KnativeServing
from harness.kube_emulator import KubeEmulator
from harness.manifests import TINY_CHAT
from harness.ports import free_port
from harness.redis_server import RedisServer
from knative.status import condition
from tests.integration.autoscaler_process import AutoscalerProcess
from tests.integration.pod_runner import PodRunner
from tests.knative.knative_world import APPS, PA, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

NS = "default"
REVISION = "tiny-chat-00001"
DEPLOYMENT = f"{REVISION}-deployment"


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runtime.tinymodel import make_tiny_llama

    home = tmp_path_factory.mktemp("torpor-home")
    make_tiny_llama(home / "models" / "tiny-llama")
    return home


@contextlib.asynccontextmanager
async def activator(bus_url: str, tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    log = tmp_path / "activator.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "activator", "--bus", bus_url, "--host", "127.0.0.1",
            "--port", str(port), "--id", "activator-0",
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            deadline = time.monotonic() + 60
            while True:
                assert process.returncode is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def pa(emulator: KubeEmulator) -> dict[str, Any]:
    obj = emulator.get(PA, "podautoscalers", NS, REVISION)
    assert obj is not None
    return obj


def active(emulator: KubeEmulator) -> tuple[str | None, str | None]:
    c = condition(pa(emulator).get("status") or {}, "Active")
    return (None, None) if c is None else (c.get("status"), c.get("reason"))


def wanted(emulator: KubeEmulator) -> int:
    deployment = emulator.get(APPS, "deployments", NS, DEPLOYMENT)
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


async def test_a_request_at_zero_cold_starts_a_pod_and_the_revision_returns_to_zero(
    redis_server: RedisServer, tiny_home: Path, tmp_path: Path
) -> None:
    emulator = KubeEmulator()
    await emulator.start()
    emulator.replicasets = True
    runner = PodRunner(
        emulator,
        NS,
        DEPLOYMENT,
        port=free_port(),
        logs=tmp_path,
        node_env={"TORPOR_HOME": str(tiny_home)},
        # The manifest's models volume (the cache warmer's layout) is this home's models.
        mounts={"/models": tiny_home / "models"},
    )
    runner_task = asyncio.create_task(runner.run())
    autoscaler = AutoscalerProcess(
        "autoscaler-0", await emulator.listen(), redis_server.url, tmp_path, tick_s=0.5
    )
    seen_active: list[tuple[str | None, str | None]] = []

    async def watch_status() -> None:
        while True:
            now = active(emulator)
            if not seen_active or seen_active[-1] != now:
                seen_active.append(now)
            await asyncio.sleep(0.05)

    status_task: asyncio.Task[None] | None = None
    serving = KnativeServing(emulator)
    serving_task = asyncio.create_task(serving.run(0.05))

    def revision_ready() -> bool:
        c = serving.revision_condition(NS, REVISION, "Ready")
        return c is not None and c.status == "True"

    try:
        assert serving.apply(TINY_CHAT.read_text()) == REVISION
        await autoscaler.healthy()
        # At zero (initial-scale 0): the controller publishes the service, NoTraffic, and
        # Knative's rules make the Revision Ready without a pod.
        await eventually(lambda: active(emulator) == ("False", "NoTraffic"))
        await eventually(revision_ready)
        assert serving.traffic(NS, "tiny-chat") == {REVISION: 100}
        assert wanted(emulator) == 0 and runner.started == []
        status_task = asyncio.create_task(watch_status())

        async with activator(redis_server.url, tmp_path) as base:
            client = AsyncOpenAI(
                base_url=f"{base}/default/tiny-chat/v1", api_key="unused", max_retries=0
            )
            started = time.monotonic()
            answer = await client.completions.create(
                model="tiny-chat", prompt="Hello", max_tokens=4, timeout=150
            )
            cold_start_s = time.monotonic() - started
            await client.close()
        assert answer.choices and answer.choices[0].text is not None
        assert len(runner.started) == 1, runner.started
        print(f"cold start through the activator at zero: {cold_start_s:.1f} s")

        # The status moved: queued while the pod started, Active once it was ready.
        await eventually(lambda: active(emulator) == ("True", None))
        assert ("Unknown", "Queued") in seen_active, seen_active
        status = pa(emulator)["status"]
        assert status["actualScale"] == 1 and status["desiredScale"] == 1

        # Idle: the window (10 s) reads zero, the grace period (10 s) passes, back to zero.
        await eventually(lambda: wanted(emulator) == 0, within_s=120)
        await eventually(lambda: runner.exits.get(runner.started[0]) is not None, within_s=60)
        await eventually(lambda: active(emulator) == ("False", "NoTraffic"))
        assert emulator.pods_of(NS, DEPLOYMENT) == []
        assert pa(emulator)["status"]["desiredScale"] == 0
        assert revision_ready() and serving.traffic(NS, "tiny-chat") == {REVISION: 100}
    except BaseException:
        print("PodAutoscaler status:", pa(emulator).get("status"))
        print("Revision:", emulator.get("apis/serving.knative.dev/v1", "revisions", NS, REVISION))
        print(runner.log_tail(), autoscaler.log.read_text()[-6000:], sep="\n")
        print((tmp_path / "activator.log").read_text()[-3000:])
        raise
    finally:
        for task in (status_task, runner_task, serving_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        autoscaler.stop()
        await emulator.stop()
