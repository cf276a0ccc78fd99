"""The fault run: load on two real-vLLM services of the embedded platform while things break.

Shared by ``tests/faults/test_faults.py`` (short) and ``benchmarks/faults.py`` (long); ``Plan``
sets the sizes. The faults, in order:

1. **a replica that fails to start**: a third service whose model path does not exist is called
   while the two good services cold-start under load;
2. **a replica killed mid-stream**: SIGKILL to the process group of the replica serving a long
   stream (vLLM's engine core included), under load, then load again while it comes back;
3. **scale-down during load**: one service is left idle until the autoscaler scales it down, and
   a burst lands on it while it drains, with the other service busy all along;
4. **an engine killed**: SIGKILL to vLLM's engine core process only, of a replica of A under
   load: its API server still answers (vLLM's ``EngineDeadError``, a 500 or a stream's first
   event), so the activator takes it out of rotation and sends the requests on to another
   replica or holds them for the replacement (issue 13 item 9);
5. **a replica frozen past timeoutSeconds**: SIGSTOP to the replica of a fourth service
   (``timeoutSeconds`` short, kept at one replica) for longer than its timeout, under load, then
   SIGCONT: requests end in a typed timeout, and the thawed replica answers again;
6. **Redis restarted under two activators, then an activator restarted** (``Plan.redis_requests``
   > 0 and a redis-server on PATH; ``harness.faults.redis_phase``): two ``python -m activator``
   processes over a real redis-server in front of A's replicas;
7. **the platform restarted** (the embedded activator with it): SIGTERM to ``torpor up`` with
   requests in flight (a long stream among them), then ``torpor up`` again on the same ports;
   deployed services come back from the state directory and cold-start again under the same load.

``Plan.background_concurrency`` > 0 keeps steady load on A through the whole run, beside the
phases (the long run's bulk). After each fault the next cold start of the service it hit is
recorded (``FaultRun.cold_starts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.faults.loadgen import Load, Outcome, Tally, Target, call
from harness.faults.manifests import short_timeout_chat
from harness.faults.processes import (
    describe,
    engine_pids,
    kill_groups,
    kill_pids,
    listening_pid,
    oldest_replica_group,
    replica_groups,
    signal_groups,
    survivors,
)
from harness.faults.redis_phase import redis_phase
from harness.manifests import TINY_CHAT, renamed_tiny_chat
from harness.platform import Control, Platform

A, B, BROKEN, FROZEN = "tiny-chat", "tiny-chat-b", "tiny-chat-broken", "tiny-chat-frozen"


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
    engine_kills: int = 1
    freezes: int = 1
    frozen_timeout_s: int = 8  # timeoutSeconds of the frozen service
    freeze_s: float = 12.0  # how long its replica stays stopped (more than the timeout)
    # Steady load on A all run long (it also keeps A's replicas up for the Redis phase, whose
    # load the embedded autoscaler does not see); concurrency 0: none.
    background_concurrency: int = 1
    background_requests: int = 1_000_000  # bounded by the run, not the count
    background_pause_s: float = 1.0  # per background worker, between requests
    redis_requests: int = 10_000  # at most, through the two Redis-bus activators; 0: no phase
    redis_concurrency: int = 2
    redis_step_s: float = 4.0  # load before Redis restarts, after it, after the activator's
    # Before the platform restarts: more load on A and B until this many distinct requests were
    # sent, or until ``top_up_until_s`` from the start (the long run's size); 0: none.
    min_requests: int = 0
    top_up_until_s: float = 0.0


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
    cold_starts: list[dict[str, Any]] = field(default_factory=list)  # the next one after a fault
    activator_exit_codes: list[int] = field(default_factory=list)  # the Redis phase's
    started: float = field(default_factory=time.monotonic)
    _watches: list[asyncio.Task[None]] = field(default_factory=list)

    def fault(self, name: str, detail: str = "") -> None:
        self.faults.append(Fault(name, round(time.monotonic() - self.started, 1), detail))

    def watch_cold_start(
        self, control: Callable[[], Control], service: str, after: str, timeout_s: float = 180
    ) -> None:
        """Record the next cold start of ``service`` (a new ``last_cold_start``) after a fault."""

        async def watch() -> None:
            row: dict[str, Any] = {"after": after, "service": service}
            seen: Any = None
            with contextlib.suppress(Exception):
                seen = await _last_cold_start(control(), service)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    cold = await _last_cold_start(control(), service)
                    if cold and (seen is None or cold["replica_id"] != seen["replica_id"]):
                        row |= {
                            "replica_id": cold["replica_id"],
                            "seconds": cold["total_seconds"],
                            "warm": cold["warm"],
                        }
                        self.cold_starts.append(row)
                        return
                await asyncio.sleep(0.5)
            self.cold_starts.append(row | {"seconds": None, "note": "none within the watch"})

        self._watches.append(asyncio.create_task(watch()))

    async def wait_watches(self, timeout_s: float) -> None:
        if self._watches:
            await asyncio.wait(self._watches, timeout=timeout_s)

    async def settle_watches(self) -> None:
        for task in self._watches:
            task.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)

    def report(self) -> dict[str, Any]:
        refused = self.tally.count("refused")
        return {
            **self.tally.summary(),
            # A refused connection is the client's retry, not a request: nothing was accepted.
            "distinct_requests": self.tally.sent - refused,
            "client_retries": refused,
            "raw_engine_500s": sum(o.kind.startswith("500") for o in self.tally.outcomes),
            "cold_starts_after_faults": self.cold_starts,
            "faults_injected": len(self.faults),
            "faults": [asdict(f) for f in self.faults],
            "platform_exit_codes": self.exit_codes,
            "activator_exit_codes": self.activator_exit_codes,
            "orphan_processes": self.orphans,
            "errors_sample": {
                o.kind: o.message for o in self.tally.outcomes if o.result == "error"
            },
            "lost_detail": [o.as_dict() for o in self.tally.lost()],
        }


# ---- the run --------------------------------------------------------------------------------


async def _last_cold_start(control: Control, service: str) -> dict[str, Any] | None:
    rows = await control.revisions(service)
    colds = [r["last_cold_start"] for r in rows if r.get("last_cold_start")]
    return max(colds, key=lambda c: c["started_at"]) if colds else None


async def _serving_pid(control: Control, service: str) -> int | None:
    """The process of the service's longest-ready replica, found by the port it listens on."""
    urls = [u for r in await control.revisions(service) for u in r["replica_urls"]]
    for url in urls:
        pid = await asyncio.to_thread(listening_pid, int(url.rsplit(":", 1)[1]))
        if pid is not None:
            return pid
    return None


async def _ready_replicas(control: Control, service: str, at_least: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    ready = 0
    while time.monotonic() < deadline:
        rows = await control.revisions(service)
        ready = sum(r["ready_replicas"] for r in rows)
        if ready >= at_least:
            break
        await asyncio.sleep(0.5)
    return ready


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


async def run_faults(home: Path, tmp: Path, plan: Plan, run: FaultRun | None = None) -> FaultRun:
    """Run the scenario; ``run`` (when given) holds what happened even if the run fails."""
    run = run if run is not None else FaultRun()
    platform = await asyncio.to_thread(Platform.start, home)
    control = Control(platform)
    client = httpx.AsyncClient(timeout=plan.timeout_s)
    stop_steady = asyncio.Event()
    steady: asyncio.Task[None] | None = None
    try:
        manifests = [
            TINY_CHAT,
            renamed_tiny_chat(tmp, B),
            renamed_tiny_chat(tmp, BROKEN, model="no-such-model"),
        ]
        if plan.freezes:
            manifests.append(
                short_timeout_chat(tmp, FROZEN, timeout_s=plan.frozen_timeout_s, min_scale=1)
            )
        for m in manifests:
            await control.deploy(m)
        base = f"http://127.0.0.1:{platform.port}/default"
        ta, tb, tbroken, tfrozen = (Target(n, f"{base}/{n}/v1", n) for n in (A, B, BROKEN, FROZEN))

        def load(targets: list[Target], count: int, **kw: Any) -> Load:
            kw.setdefault("concurrency", plan.concurrency)
            kw.setdefault("deadline_s", plan.timeout_s * 2)
            return Load(
                targets,
                count,
                max_tokens=plan.max_tokens,
                timeout_s=plan.timeout_s,
                **kw,
            )

        def current() -> Control:
            return control

        if plan.background_concurrency:
            background_load = Load(
                [ta],
                plan.background_requests,
                concurrency=plan.background_concurrency,
                max_tokens=plan.max_tokens,
                timeout_s=plan.timeout_s,
                deadline_s=24 * 3600,
                pause_s=plan.background_pause_s,
            )
            steady = asyncio.create_task(background_load.run(run.tally, stop_steady))

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
                serving = await _serving_pid(control, A)
                groups = {serving} if serving else oldest_replica_group(home, f"{A}-00001")
                kill_groups(groups)
                run.fault("replica killed mid-stream", f"SIGKILL to process group {groups}")
                run.watch_cold_start(current, A, "replica killed mid-stream")
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
                    run.watch_cold_start(current, B, "scale-down during load")
                    await load([tb], plan.concurrency * 2).run(run.tally)
            finally:
                stop_a.set()
                await busy

        # 4. vLLM's engine core killed under load; its API server answers on.
        for _ in range(plan.engine_kills):
            run.tally.phase = "engine killed"
            around = asyncio.create_task(load([ta], plan.per_phase).run(run.tally))
            await _ready_replicas(control, A, 1, plan.timeout_s)
            await asyncio.sleep(1.0)  # requests in flight on it
            replica = await _serving_pid(control, A)
            pids = engine_pids(replica) if replica else []
            kill_pids(pids)
            run.fault(
                "engine killed",
                f"SIGKILL to the engine core {pids} of replica process {replica}; its API "
                "server left running",
            )
            run.watch_cold_start(current, A, "engine killed")
            await around
            run.tally.phase = "after the engine kill"
            await load([ta], plan.per_phase // 2).run(run.tally)

        # 5. A replica frozen for longer than its service's timeoutSeconds, under load.
        for _ in range(plan.freezes):
            run.tally.phase = "replica frozen past timeoutSeconds"
            await _ready_replicas(control, FROZEN, 1, plan.timeout_s)
            frozen_pid = await _serving_pid(control, FROZEN)
            groups = {frozen_pid} if frozen_pid else set()
            stop_frozen = asyncio.Event()
            frozen = asyncio.create_task(
                load([tfrozen], plan.per_phase * 20, pause_s=0.2).run(run.tally, stop_frozen)
            )
            await asyncio.sleep(2.0)
            signal_groups(groups, signal.SIGSTOP)
            run.fault(
                "replica frozen past timeoutSeconds",
                f"SIGSTOP to process group {groups} for {plan.freeze_s:g}s "
                f"(timeoutSeconds {plan.frozen_timeout_s})",
            )
            try:
                await asyncio.sleep(plan.freeze_s)
            finally:
                signal_groups(groups, signal.SIGCONT)
            await asyncio.sleep(3.0)
            stop_frozen.set()
            await frozen
            run.tally.phase = "after the thaw"
            await load([tfrozen], plan.per_phase // 2).run(run.tally)

        # 6. Redis restarted under two activators, then one activator restarted.
        if plan.redis_requests:
            urls = [u for r in await control.revisions(A) for u in r["replica_urls"]]
            codes = await redis_phase(
                run.tally,
                urls,
                tmp / "redis-phase",
                count=plan.redis_requests,
                step_s=plan.redis_step_s,
                concurrency=plan.redis_concurrency,
                max_tokens=plan.max_tokens,
                timeout_s=plan.timeout_s,
                fault=run.fault,
            )
            run.activator_exit_codes += codes

        # Load until the run has its size, then the last fault.
        if plan.min_requests:
            run.tally.phase = "steady load to the run's size"
            stop_top_up = asyncio.Event()
            top_up = asyncio.create_task(
                load([ta, tb], 10**7, deadline_s=24 * 3600).run(run.tally, stop_top_up)
            )
            end = run.started + plan.top_up_until_s
            while (  # noqa: ASYNC110 - polls a count that has no event
                run.tally.sent - run.tally.count("refused") < plan.min_requests
                and time.monotonic() < end
                and not top_up.done()
            ):
                await asyncio.sleep(1.0)
            stop_top_up.set()
            await top_up

        # 7. The platform restarted with requests in flight.
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
            run.watch_cold_start(current, A, "platform restarted")
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
        # Room for the last cold starts after a fault to be seen.
        await run.wait_watches(60.0)
    finally:
        stop_steady.set()
        if steady is not None:
            await steady
        await run.settle_watches()
        await client.aclose()
        await control.aclose()
        groups = replica_groups(home)
        run.exit_codes.append(await asyncio.to_thread(platform.stop))
        run.orphans += describe(await survivors(groups))
        kill_groups(groups | replica_groups(home))
    return run
