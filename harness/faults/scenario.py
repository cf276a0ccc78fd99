"""The fault run: load on two real-vLLM services of the embedded platform while things break.

Shared by ``tests/faults/test_faults.py`` (short) and ``benchmarks/faults.py`` (long); ``Plan``
sets the sizes. The faults, in order:

1. **a replica that fails to start**: a third service whose model path does not exist is called
   while the two good services cold-start under load;
2. **a replica killed mid-stream**: SIGKILL to the process group of the replica serving a long
   stream (vLLM's engine core included), under load, then load again while it comes back;
3. **scale-down during load**: one service is left idle until the autoscaler scales it down, and
   a burst lands on it while it drains, with the other service busy all along;
4. **the platform restarted**: SIGTERM to ``torpor up`` with requests in flight (a long stream
   among them), then ``torpor up`` again on the same ports; deployed services come back from the
   state directory and cold-start again under the same load.

(The Redis bus restart is the Redis bus's own fault test: tests/torpor/bus/test_redis.py.)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.faults.loadgen import Load, Outcome, Tally, Target, call
from harness.faults.processes import (
    describe,
    kill_groups,
    oldest_replica_group,
    replica_groups,
    survivors,
)
from harness.manifests import TINY_CHAT, renamed_tiny_chat
from harness.platform import Control, Platform

A, B, BROKEN = "tiny-chat", "tiny-chat-b", "tiny-chat-broken"


@dataclass(frozen=True, slots=True)
class Plan:
    per_phase: int = 12  # requests per load phase
    concurrency: int = 4
    max_tokens: int = 16
    long_tokens: int = 400  # the stream a fault lands in the middle of
    timeout_s: float = 300.0  # per request; cold starts on 2 shared cores are slow
    broken_calls: int = 2
    kills: int = 1
    scale_downs: int = 1
    restarts: int = 1


@dataclass
class Fault:
    name: str
    at_s: float
    detail: str = ""


@dataclass
class FaultRun:
    tally: Tally = field(default_factory=Tally)
    faults: list[Fault] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # pid and command line
    started: float = field(default_factory=time.monotonic)

    def fault(self, name: str, detail: str = "") -> None:
        self.faults.append(Fault(name, round(time.monotonic() - self.started, 1), detail))

    def report(self) -> dict[str, Any]:
        return {
            **self.tally.summary(),
            "faults_injected": len(self.faults),
            "faults": [asdict(f) for f in self.faults],
            "platform_exit_codes": self.exit_codes,
            "orphan_processes": self.orphans,
            "errors_sample": {
                o.kind: o.message for o in self.tally.outcomes if o.result == "error"
            },
            "lost_detail": [o.as_dict() for o in self.tally.lost()],
        }


# ---- the run --------------------------------------------------------------------------------


async def _long_stream(
    client: httpx.AsyncClient, target: Target, plan: Plan
) -> tuple[asyncio.Task[Outcome], asyncio.Event]:
    first = asyncio.Event()
    task = asyncio.create_task(
        call(
            client,
            target,
            stream=True,
            max_tokens=plan.long_tokens,
            timeout_s=plan.timeout_s,
            on_first_chunk=first,
        )
    )
    return task, first


async def _first_chunk(task: asyncio.Task[Outcome], first: asyncio.Event, timeout_s: float) -> bool:
    """Wait for the stream's first event; False if it ended (or timed out) before one."""
    waiter = asyncio.create_task(first.wait())
    await asyncio.wait({task, waiter}, timeout=timeout_s, return_when="FIRST_COMPLETED")
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    return first.is_set()


async def _await_scale_down(control: Control, service: str, timeout_s: float) -> bool:
    """Until the autoscaler decides zero for ``service`` while a replica is still there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = await control.revisions(service)
        if any(
            r["desired_replicas"] == 0 and (r["ready_replicas"] or r.get("draining_replicas"))
            for r in rows
        ):
            return True
        await asyncio.sleep(0.1)
    return False


async def run_faults(home: Path, tmp: Path, plan: Plan) -> FaultRun:
    run = FaultRun()
    platform = await asyncio.to_thread(Platform.start, home)
    control = Control(platform)
    client = httpx.AsyncClient(timeout=plan.timeout_s)
    try:
        for m in (
            TINY_CHAT,
            renamed_tiny_chat(tmp, B),
            renamed_tiny_chat(tmp, BROKEN, model="no-such-model"),
        ):
            await control.deploy(m)
        base = f"http://127.0.0.1:{platform.port}/default"
        ta, tb, tbroken = (Target(n, f"{base}/{n}/v1", n) for n in (A, B, BROKEN))

        def load(targets: list[Target], count: int, **kw: Any) -> Load:
            kw.setdefault("concurrency", plan.concurrency)
            return Load(
                targets,
                count,
                max_tokens=plan.max_tokens,
                timeout_s=plan.timeout_s,
                deadline_s=plan.timeout_s * 2,
                **kw,
            )

        # 1. Cold starts of both services under load, beside a service that cannot start.
        async def broken() -> None:
            for i in range(plan.broken_calls):
                run.tally.add(
                    await call(
                        client, tbroken, stream=i % 2 == 1, max_tokens=4, timeout_s=plan.timeout_s
                    )
                )

        run.tally.phase = "cold starts + a replica that fails to start"
        run.fault("replica fails to start", f"{BROKEN}: model path does not exist")
        await asyncio.gather(load([ta, tb], plan.per_phase).run(run.tally), broken())

        # 2. A replica killed mid-stream, with load on both services around it.
        for _ in range(plan.kills):
            run.tally.phase = "replica killed mid-stream"
            background = asyncio.create_task(load([ta, tb], plan.per_phase).run(run.tally))
            stream, first = await _long_stream(client, ta, plan)
            if await _first_chunk(stream, first, plan.timeout_s):
                groups = oldest_replica_group(home, f"{A}-00001")
                kill_groups(groups)
                run.fault("replica killed mid-stream", f"SIGKILL to process group {groups}")
            run.tally.add(await stream)
            await background
            run.tally.phase = "after the kill"
            # And the service comes back for the next requests.
            await load([ta], plan.per_phase // 2).run(run.tally)

        # 3. Scale-down during load: B idles into scale-down while A is busy; a burst meets it.
        for _ in range(plan.scale_downs):
            run.tally.phase = "scale-down during load"
            await load([tb], 2, concurrency=1).run(run.tally)  # B has a replica to lose
            stop_a = asyncio.Event()
            busy = asyncio.create_task(
                load([ta], plan.per_phase * 20, concurrency=2, pause_s=0.5).run(run.tally, stop_a)
            )
            try:
                if await _await_scale_down(control, B, 120):
                    run.fault("scale-down during load", f"{B} decided zero with a replica up")
                    await load([tb], plan.concurrency * 2).run(run.tally)
            finally:
                stop_a.set()
                await busy

        # 4. The platform restarted with requests in flight.
        for _ in range(plan.restarts):
            run.tally.phase = "platform restart"
            stop_load = asyncio.Event()
            background = asyncio.create_task(
                load([ta, tb], plan.per_phase * 4, concurrency=2, pause_s=0.2).run(
                    run.tally, stop_load
                )
            )
            stream, first = await _long_stream(client, ta, plan)
            await _first_chunk(stream, first, plan.timeout_s)
            groups = replica_groups(home)
            await control.aclose()
            run.exit_codes.append(await asyncio.to_thread(platform.stop))
            run.fault("platform restarted", "SIGTERM to torpor up with requests in flight")
            run.orphans += describe(await survivors(groups))
            run.tally.add(await stream)
            platform = await asyncio.to_thread(platform.restart)
            control = Control(platform)
            restored = {
                r["service"] for r in (await control.revisions(A)) + (await control.revisions(B))
            }
            assert restored == {A, B}, restored
            # The same load goes on against the restarted platform until it has answered some.
            after = run.tally.count("ok")
            deadline = time.monotonic() + plan.timeout_s
            while run.tally.count("ok") < after + 2 and time.monotonic() < deadline:
                if background.done():
                    break
                await asyncio.sleep(0.5)
            stop_load.set()
            await background
    finally:
        await client.aclose()
        await control.aclose()
        groups = replica_groups(home)
        run.exit_codes.append(await asyncio.to_thread(platform.stop))
        run.orphans += describe(await survivors(groups))
        kill_groups(groups | replica_groups(home))
    return run
