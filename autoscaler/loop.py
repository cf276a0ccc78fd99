"""The autoscaler's impure half: one loop per revision that observes, decides and actuates.

Each revision has its own asyncio task, so a slow scrape or a failing replica of one never
delays another. A tick runs every ``tick_s``, and at once when an activator pokes the revision.
A tick reads the actuator's replicas, scrapes the ready ones, reads that revision's own activator
stats from the bus (``Bus.revision_stats``, never the whole snapshot), asks the pure ``decide``
how many replicas and the pure ``plan`` which, and executes that: starts replicas, or drains one
and only then stops it. Every decision reads one injected clock, once per tick. Only the leader
writes (see ``Autoscaler``).

A revision at rest (``at_rest``: no replica of any phase, nothing held or in flight at the
activators, nothing arrived, zero desired) is not polled: its loop sleeps until a poke, a spec
change or a change of leadership wakes it. Anything it still waits for (a scale-to-zero grace, a
start-up backoff, requests held at zero) keeps it out of rest, so it ticks. Serverless means most
revisions sit at zero: before this, 10,000 of them cost the embedded platform's process every
core it had doing nothing (benchmarks/results/control_plane_scale.md).

Suspended replicas (issue 17) are never scraped or published: ``decide`` sees them as idle
capacity (``plan.suspended_load``), ``plan`` says when to freeze and wake them. A replica is taken
out of the endpoints before it is frozen, and frozen only if it is still idle then; a wake runs
inside the tick, so it is single-flight per revision, and the woken replica is published at once.
An activator that had not yet heard of the withdrawal (bus latency, milliseconds) may still send
a request to the frozen replica: its in-flight count wakes the replica on the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace

from autoscaler.actuator import Actuator, Phase, Replica, SuspendUnsupported
from autoscaler.crashloop import CrashLoopPolicy
from autoscaler.decide import Decision, Observation, ReplicaLoad, ScalerState, decide
from autoscaler.lora_client import HttpLoraClient, LoraClient
from autoscaler.metrics import AutoscalerMetrics
from autoscaler.placer import AdapterPlacer
from autoscaler.plan import (
    Failure,
    Plan,
    StartRecord,
    Suspension,
    announcement,
    arrivals_since,
    plan,
    publish_needed,
    reckon,
    revision_state,
    serving,
    spec_changed,
    suspended_load,
    track_idle,
)
from autoscaler.scrape import HttpScraper, Scraper
from torpor.bus import (
    ActivatorStats,
    Bus,
    EndpointsChanged,
    Poked,
    RevisionEndpoints,
    ServicesChanged,
)
from torpor.spec import RevisionSpec, ServiceSpec
from torpor.status import ColdStart, CrashLoopStatus, RevisionStatus

log = logging.getLogger("torpor.autoscaler")


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """The loop's timings and crash-loop policy: the one place ``tick_s`` is set."""

    tick_s: float = 2.0
    stats_fresh_s: float = 5.0  # activator stats older than this are ignored
    drain_poll_s: float = 0.5
    # A draining replica is stopped once it has looked idle this long without a break: longer
    # than the activators' stats interval (1 s), so a request on its way to the replica when it
    # first looked idle shows in vLLM's gauges or an activator's report before the stop.
    drain_quiet_s: float = 1.5
    ready_poll_s: float = 0.05  # how often starting replicas are checked for readiness
    # Replicas that die before or soon after ready: the kubelet's backoff (autoscaler.crashloop).
    crash_loop: CrashLoopPolicy = field(default_factory=CrashLoopPolicy)

    def __post_init__(self) -> None:
        for name in ("tick_s", "stats_fresh_s", "drain_poll_s", "ready_poll_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LoopConfig.{name} must be positive, not {getattr(self, name)}")
        if not self.drain_quiet_s >= 0:
            raise ValueError(f"LoopConfig.drain_quiet_s must not be negative: {self.drain_quiet_s}")


def always_leader() -> bool:
    """The embedded platform's leadership: one autoscaler, always in charge."""
    return True


@dataclass(frozen=True, slots=True)
class LoopDeps:
    """Everything a revision's loop reads and writes, handed to it explicitly."""

    bus: Bus
    actuator: Actuator
    scraper: Scraper
    config: LoopConfig
    clock: Callable[[], float]  # wall-clock seconds: activator stats are stamped with time.time()
    metrics: AutoscalerMetrics
    leader: Callable[[], bool]  # whether this autoscaler may publish and actuate right now
    lora: LoraClient | None = None  # loads LoRA adapters on replicas (autoscaler.adapters)


def fresh_stats(
    stats: Sequence[ActivatorStats], now: float, fresh_s: float
) -> list[ActivatorStats]:
    """The activators' reports measured within ``fresh_s`` of ``now``."""
    return [s for s in stats if s.at >= now - fresh_s]


def activator_load(stats: Sequence[ActivatorStats], now: float, fresh_s: float) -> tuple[int, int]:
    """Queued and in-flight requests summed over the activators whose stats are fresh."""
    fresh = fresh_stats(stats, now, fresh_s)
    return sum(s.queued for s in fresh), sum(s.in_flight for s in fresh)


def at_rest(
    decision: Decision, obs: Observation, *, replicas: int, draining: int, settling: bool = False
) -> bool:
    """Whether a revision's loop may sleep until something wakes it: nothing runs, starts,
    drains or fails (a failed replica is still the loop's to stop), no request is held, in
    flight or arrived at any activator, and the decision is zero, so no grace period or backoff
    is pending, nor a pre-warm (``Decision.prewarm_pending``: the learned keep-alive starts a
    replica before a predicted request, which only a tick can do). A poke, a spec change or a
    change of leadership is what ends the rest. Nor while ``settling``: a replica died moments
    ago, before the activators' next reports could say whether the request it was started for
    still waits (a start-up failure within a second of a poke would otherwise leave that
    request held, unseen, until its timeout)."""
    return (
        not settling
        and decision.desired == 0
        and not decision.prewarm_pending
        and replicas == 0
        and draining == 0
        and obs.activator_queued == 0
        and obs.activator_in_flight == 0
        and obs.arrivals == 0
        and not obs.poked
    )


@dataclass(frozen=True, slots=True)
class _Target:
    """A revision as the autoscaler scales it: its spec, and whether any traffic reaches it."""

    spec: RevisionSpec
    routed: bool

    def autoscaling(self) -> RevisionSpec:
        if self.routed:
            return self.spec
        # Knative scales an unreachable revision to zero whatever its min-scale says.
        a = replace(self.spec.autoscaling, min_scale=0, initial_scale=0)
        return replace(self.spec, autoscaling=a)


def _targets(services: Sequence[ServiceSpec]) -> dict[str, _Target]:
    out: dict[str, _Target] = {}
    for service in services:
        routed = {r.ref.key for r in service.routed_revisions()}
        for rev in service.revisions:
            out[rev.ref.key] = _Target(rev, rev.ref.key in routed)
    return out


class _RevisionLoop:
    """Observes one revision, asks ``decide`` how many and ``plan`` which, and executes the plan.

    Only the leader writes (publishes endpoints, starts, stops, drains); a standby runs the same
    ticks, so it has a current view and decision the moment it takes over.
    """

    def __init__(self, target: _Target, deps: LoopDeps) -> None:
        self._deps = deps
        self.target = target
        self.key = target.spec.ref.key
        self.wake = asyncio.Event()
        self.poked = False
        self.requests_seen: dict[str, int] = {}  # activators' requests_total, last tick
        self.state = ScalerState()
        self.decision = Decision(desired=0, reason="not yet decided")
        self.obs = Observation()
        self.record = StartRecord()
        self.served: set[str] = set()  # replicas seen to have finished a request (``reckon``)
        self.draining: dict[str, asyncio.Task[None]] = {}  # in the order their drains began
        self.stopping: set[str] = set()  # drained, being stopped
        self.published: RevisionEndpoints | None = None
        self.last_cold_start: ColdStart | None = None
        # As of the last tick (None before the first); a standby observes but never writes.
        self.leading: bool | None = None
        self.resting = False  # as of the last tick: see ``at_rest``
        self.idle_since: dict[str, float] = {}  # serving replica -> since when it had no work
        self.suspending: set[str] = set()  # withdrawn from the endpoints, being frozen
        self.suspend_unsupported = False  # the actuator said so: scale as without the tier
        # LoRA adapters (issue 16): which replica holds which, executed (autoscaler.placer).
        self.adapters = (
            AdapterPlacer(self.key, deps.lora, deps.clock) if deps.lora is not None else None
        )

    @property
    def spec(self) -> RevisionSpec:
        return self.target.autoscaling()

    def update(self, target: _Target) -> None:
        if target == self.target:
            return
        if target.spec != self.target.spec:
            self.record = spec_changed(self.record)
        self.target = target
        self.wake.set()  # a resting loop looks at its new spec (min-scale may now be 1)

    def poke(self, adapter: str | None = None) -> None:
        self.poked = True
        if adapter is not None and self.adapters is not None:
            self.adapters.poke(adapter)
        self.wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("revision %s: tick failed", self.key)
            if self.resting:
                await self.wake.wait()
            else:
                await self._sleep()
            self.wake.clear()

    async def _sleep(self) -> None:
        """Until the next tick or a poke; while replicas start, tick the moment one is ready
        (and so publish it), since requests held at zero wait on exactly that. A wait, not a
        decision: it runs on the event loop's timer, whatever clock the decisions read."""
        loop = asyncio.get_running_loop()
        config = self._deps.config
        deadline = loop.time() + config.tick_s

        def starting() -> set[str]:
            replicas = self._deps.actuator.replicas(self.key)
            return {r.replica_id for r in replicas if r.phase is Phase.STARTING}

        while (remaining := deadline - loop.time()) > 0:
            before = starting()
            timeout = min(remaining, config.ready_poll_s) if before else remaining
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # races with the event being set, and then the loop never stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
                return
            if before - starting():
                return  # one became ready (or failed, or went): tick now

    async def tick(self) -> None:
        deps = self._deps
        now = deps.clock()
        spec = self.spec
        was_leading, self.leading = self.leading, deps.leader()
        if was_leading and not self.leading:
            # The new leader decides about them: a standby's drain would never stop them.
            log.info("revision %s: no longer leader; observing only", self.key)
            await self.aclose()
            if self.adapters is not None:
                self.adapters.forget()  # the new leader places them now
        replicas = list(deps.actuator.replicas(self.key))
        live = [r for r in replicas if r.phase is not Phase.FAILED]
        # A standby leaves failed replicas to the leader, and does not count them either.
        self.record, failures = reckon(
            self.record,
            replicas if self.leading else live,
            now,
            deps.config.crash_loop,
            served=self.served,
        )
        present = {r.replica_id for r in replicas}
        self.served = {rid for rid in self.served if rid in present}
        for failure in failures:
            await self._stop_failed(failure)
        for r in live:
            cold = r.cold_start
            if cold is not None and (
                self.last_cold_start is None or cold.started_at >= self.last_cold_start.started_at
            ):
                self.last_cold_start = cold
        # A new counted death is published at once; so is everything when taking over, since
        # what the previous leader published may be stale.
        force = any(f.counted for f in failures) or (self.leading and was_leading is False)
        if self.leading and spec.lora is not None and self.adapters is not None:
            # Before publishing: a restarted or new leader lists what replicas already hold.
            await self.adapters.learn(spec.lora, self._serving(live), now)
        await self._publish(live, force=force)

        ready = self._serving(live)
        starting = [r for r in live if r.phase is Phase.STARTING]
        parked = [r for r in live if r.phase is Phase.SUSPENDED]
        loads = await self._scrape(ready)
        self.served |= {x.replica_id for x in loads if x.completed}
        loads += [suspended_load(r.replica_id) for r in parked]
        stats = await deps.bus.revision_stats(self.key)
        queued, in_flight = activator_load(stats, now, deps.config.stats_fresh_s)
        arrived, reporting = arrivals_since(self.requests_seen, stats)
        # Activators report a revision only while it has traffic (and once more after), so one
        # missing from this read is quiet, not gone: its counter is kept, and the next request
        # it accepts after a quiet spell counts as an arrival.
        self.requests_seen = {**self.requests_seen, **reporting}
        poked, self.poked = self.poked, False
        self.obs = Observation(
            ready=tuple(loads),
            starting=len(starting),
            draining=len(self.draining) + len(self.stopping),
            activator_queued=queued,
            activator_in_flight=in_flight,
            poked=poked,
            arrivals=arrived,
        )
        self.idle_since = track_idle(self.idle_since, self.obs, {r.replica_id for r in parked}, now)
        before = self.decision.desired
        self.decision, self.state = decide(spec.autoscaling, self.obs, self.state, now)
        if self.leading:
            a = spec.autoscaling
            suspension = Suspension(
                after_s=0.0 if self.suspend_unsupported else a.suspend_after_s,
                stop_after_s=a.stop_suspended_after_s,
                idle_since=self.idle_since,
            )
            steps = plan(
                self.decision, self.obs, live, tuple(self.draining), self.record, now, suspension
            )
            await self._execute(steps, spec, before)
            if spec.lora is not None and self.adapters is not None:
                fresh = fresh_stats(stats, now, deps.config.stats_fresh_s)
                changed = await self.adapters.place(
                    spec.lora, self._serving(self._live()), self.obs.ready, fresh, now
                )
                if changed is not None:
                    # A new failure is published even when it reads as the last one did, so
                    # the activators answer its waiters and may poke again.
                    await self._publish(self._live(), force=changed)
                deps.metrics.record_adapters(self.key, self.adapters.holders(spec.lora))
        deps.metrics.record(
            self.key,
            self.decision,
            ready=len(ready),
            starting=len(starting),
            draining=len(self.draining),
            suspended=len(parked),
            now=now,
        )
        died_at = self.record.crash.died_at
        self.resting = at_rest(
            self.decision,
            self.obs,
            replicas=len(deps.actuator.replicas(self.key)),
            draining=len(self.draining) + len(self.stopping),
            settling=died_at > 0 and now - died_at < deps.config.stats_fresh_s,
        )

    async def _execute(self, steps: Plan, spec: RevisionSpec, before: int) -> None:
        d, current = self.decision, self.obs.current
        if steps.republish:
            await self._publish(self._live(), force=True)
        if steps.resume:
            await self._resume(steps.resume, spec)
        for replica_id in steps.take_back:
            task = self.draining.pop(replica_id)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.info(
                "revision %s: keeping draining replica %s (%s)", self.key, replica_id, d.reason
            )
        if steps.take_back:
            await self._publish(self._live())
        if steps.held_back is not None:
            log.info("revision %s: %s", self.key, steps.held_back)
        if steps.start:
            log.info(
                "revision %s: %d -> %d, starting %d (%s)",
                self.key,
                current,
                d.desired,
                steps.start,
                d.reason,
            )
            if self._deps.leader():
                await self._deps.actuator.start(spec, steps.start)
        if steps.stop or steps.drain:
            log.info("revision %s: %d -> %d (%s)", self.key, current, d.desired, d.reason)
            for replica_id in steps.stop:
                if not self._deps.leader():
                    return
                await self._deps.actuator.stop(spec, replica_id)
            for replica_id in steps.drain:
                self.draining[replica_id] = asyncio.create_task(
                    self._drain(replica_id), name=f"drain:{replica_id}"
                )
            await self._publish(self._live())
        elif d.desired == current and d.desired != before:
            log.info("revision %s: desired %d (%s)", self.key, d.desired, d.reason)
        if steps.suspend:
            await self._suspend(steps.suspend, spec)

    async def _resume(self, replica_ids: Sequence[str], spec: RevisionSpec) -> None:
        """Wake suspended replicas (together: a held request waits on the first) and publish
        them. One that does not wake is FAILED by the actuator and replaced as a crash is."""
        if not self._deps.leader():
            return
        log.info("revision %s: waking %s", self.key, ", ".join(replica_ids))
        results = await asyncio.gather(
            *(self._deps.actuator.resume(spec, i) for i in replica_ids), return_exceptions=True
        )
        for replica_id, result in zip(replica_ids, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("revision %s: waking %s: %s", self.key, replica_id, result)
        await self._publish(self._live())

    async def _suspend(self, replica_ids: Sequence[str], spec: RevisionSpec) -> None:
        """Withdraw idle replicas from the endpoints, then freeze each one still idle: a request
        routed to it just before the withdrawal reached the activators keeps it awake."""
        deps = self._deps
        if not deps.leader():
            return
        self.suspending.update(replica_ids)
        try:
            await self._publish(self._live())
            _, in_flight = await self._activator_load(deps.clock())
            urls = {r.replica_id: r.url for r in self._live()}
            for replica_id in replica_ids:
                url = urls.get(replica_id)
                load = await deps.scraper.scrape(replica_id, url) if url else None
                if in_flight or load is None or load.work is None or load.work > 0:
                    log.info("revision %s: %s got work; not suspending it", self.key, replica_id)
                    continue
                try:
                    await deps.actuator.suspend(spec, replica_id)
                except SuspendUnsupported as e:
                    self.suspend_unsupported = True
                    log.warning("revision %s: not suspending replicas: %s", self.key, e)
                    break
                log.info("revision %s: suspended %s (idle)", self.key, replica_id)
        finally:
            self.suspending.difference_update(replica_ids)
            await self._publish(self._live())

    async def _drain(self, replica_id: str) -> None:
        """Wait until the replica holds no request (bounded by the revision's timeout), stop it."""
        deps = self._deps
        deadline = deps.clock() + self.target.spec.timeout_s
        quiet_since: float | None = None
        try:
            while deps.clock() < deadline:
                try:
                    state = await self._drain_state(replica_id)
                except Exception:
                    # A bus or scrape hiccup must not strand the replica half-drained.
                    log.exception("revision %s: checking drain of %s", self.key, replica_id)
                    state = "busy"
                now = deps.clock()
                if state == "gone":
                    break
                if state == "busy":
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = now
                if quiet_since is not None and now - quiet_since >= deps.config.drain_quiet_s:
                    break
                await asyncio.sleep(deps.config.drain_poll_s)
            else:
                log.warning(
                    "revision %s: replica %s still busy after %gs; stopping it",
                    self.key,
                    replica_id,
                    self.target.spec.timeout_s,
                )
        except asyncio.CancelledError:
            # Taken back by a scale-up (or the autoscaler is stopping): the replica lives on.
            if self.draining.get(replica_id) is asyncio.current_task():
                del self.draining[replica_id]
            raise
        if not deps.leader():
            # Leadership was lost while draining: the replica lives on for the new leader.
            self.draining.pop(replica_id, None)
            return
        # Past this point the replica goes whatever happens: it can no longer be taken back.
        self.draining.pop(replica_id, None)
        self.stopping.add(replica_id)
        try:
            await deps.actuator.stop(self.target.spec, replica_id)
        except Exception:
            log.exception("revision %s: stopping %s", self.key, replica_id)
        finally:
            self.stopping.discard(replica_id)
        with contextlib.suppress(Exception):
            await self._publish(self._live())
        self.wake.set()

    async def _drain_state(self, replica_id: str) -> str:
        """``gone`` (exited or failed), ``quiet`` (nothing on it as far as can be seen) or
        ``busy``. ``_drain`` stops a replica once it stays quiet for ``drain_quiet_s``."""
        deps = self._deps
        current = {r.replica_id: r for r in deps.actuator.replicas(self.key)}
        replica = current.get(replica_id)
        if replica is None or replica.phase is Phase.FAILED:
            return "gone"
        if replica.url is None:
            return "busy"
        load = await deps.scraper.scrape(replica_id, replica.url)
        if load is None or load.work is None or load.work > 0:
            return "busy"
        stats = fresh_stats(
            await deps.bus.revision_stats(self.key), deps.clock(), deps.config.stats_fresh_s
        )
        # An activator still streaming from it (vLLM finished, the last bytes are on their way),
        # or a request sent to it that vLLM has not counted yet.
        if any(replica_id in s.busy for s in stats):
            return "busy"
        # vLLM may have finished while the activator still streams the last bytes: the
        # activators' in-flight must be covered by the replicas that keep serving.
        in_flight = sum(s.in_flight for s in stats)
        if in_flight == 0:
            return "quiet"
        others = [r for r in self._serving(list(current.values())) if r.url]
        loads = await asyncio.gather(
            *(deps.scraper.scrape(r.replica_id, r.url or "") for r in others)
        )
        if any(x is None or x.work is None for x in loads):
            return "busy"
        covered = in_flight <= sum(x.work or 0.0 for x in loads if x is not None)
        return "quiet" if covered else "busy"

    async def _scrape(self, ready: list[Replica]) -> list[ReplicaLoad]:
        async def one(r: Replica) -> ReplicaLoad:
            load = await self._deps.scraper.scrape(r.replica_id, r.url or "")
            return load or ReplicaLoad(r.replica_id)

        return list(await asyncio.gather(*(one(r) for r in ready if r.url)))

    async def _activator_load(self, now: float) -> tuple[int, int]:
        stats = await self._deps.bus.revision_stats(self.key)
        return activator_load(stats, now, self._deps.config.stats_fresh_s)

    async def _stop_failed(self, failure: Failure) -> None:
        task = self.draining.pop(failure.replica_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._deps.leader():
            await self._deps.actuator.stop(self.target.spec, failure.replica_id)
        first_line = failure.error.splitlines()[0] if failure.error else ""
        how = (
            "failed to start"
            if failure.ready_for_s is None
            else f"died {failure.ready_for_s:.0f}s after it was ready"
        )
        if not failure.counted:
            # The waiters wait for the replacement instead of getting an error.
            log.warning(
                "revision %s: replica %s %s: %s; replacing it",
                self.key,
                failure.replica_id,
                how,
                first_line,
            )
            return
        log.warning(
            "revision %s: replica %s %s (%d in a row; next start in %.0fs): %s",
            self.key,
            failure.replica_id,
            how,
            failure.restarts,
            failure.retry_in_s,
            first_line,
        )
        if failure.retry_in_s > 0:
            log.error(
                "revision %s: crash loop, back-off %.0fs before restart %d: %s",
                self.key,
                failure.retry_in_s,
                failure.restarts,
                self.record.last_error_line or first_line,
            )

    def _live(self) -> list[Replica]:
        return [r for r in self._deps.actuator.replicas(self.key) if r.phase is not Phase.FAILED]

    def _serving(self, replicas: list[Replica]) -> list[Replica]:
        return serving(replicas, self.draining.keys() | self.stopping | self.suspending)

    async def _publish(self, replicas: list[Replica], force: bool = False) -> None:
        withdrawn = self.stopping | self.suspending
        message = announcement(self.key, replicas, self.draining, withdrawn, self.record)
        if self.adapters is not None:
            message = self.adapters.announce(message)
        if not publish_needed(self.published, message, force=force):
            return
        if not self._deps.leader():
            return
        self.published = message
        await self._deps.bus.publish_endpoints(message)

    def status(self) -> RevisionStatus:
        replicas = list(self._deps.actuator.replicas(self.key))
        ready = self._serving(replicas)
        starting = [r for r in replicas if r.phase is Phase.STARTING]
        parked = [r for r in replicas if r.phase is Phase.SUSPENDED]
        spec = self.target.spec
        state, reason = revision_state(self.record, len(ready), len(starting), len(parked))
        crash = self.record.crash
        crash_loop = (
            CrashLoopStatus(
                restarts=crash.restarts,
                last_error=self.record.last_error_line or (reason or "").split("\n")[0],
                next_try_at=crash.retry_at,
                backoff_s=crash.backoff_s,
                backing_off=crash.backing_off(self._deps.clock()),
            )
            if state == "crash-loop"
            else None
        )
        return RevisionStatus(
            revision=self.key,
            namespace=spec.ref.namespace,
            service=spec.service,
            name=spec.ref.name,
            desired_replicas=self.decision.desired,
            ready_replicas=len(ready),
            starting_replicas=len(starting),
            draining_replicas=len(self.draining) + len(self.stopping),
            suspended_replicas=len(parked),
            queued_requests=self.obs.activator_queued,
            in_flight_requests=self.obs.activator_in_flight,
            state=state,
            reason=reason,
            crash_loop=crash_loop,
            decision=self.decision.reason,
            panic=self.decision.panic,
            last_cold_start=self.last_cold_start,
            replicas=tuple(r.url for r in ready if r.url),
            adapters=self.adapters.rows(spec.lora) if self.adapters is not None else (),
        )

    async def aclose(self) -> None:
        for task in self.draining.values():
            task.cancel()
        for task in list(self.draining.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.draining.clear()


class Autoscaler:
    """Scales every revision on the bus through one actuator."""

    def __init__(
        self,
        bus: Bus,
        actuator: Actuator,
        *,
        clock: Callable[[], float] = time.time,
        tick_s: float | None = None,
        scrape: Scraper | None = None,
        config: LoopConfig | None = None,
        leader: Callable[[], bool] = always_leader,
        lora: LoraClient | None = None,
    ) -> None:
        """``tick_s`` is a shorthand for ``config=LoopConfig(tick_s=...)``; given both, they
        must agree (a ``tick_s`` default used to override the config's silently).

        ``leader`` says whether this replica of the autoscaler may write right now: every
        endpoint publication and every start, stop or drain is gated on it. A standby keeps
        observing and deciding, so it can take over at once, and republishes every revision's
        endpoints on its first tick as leader. The embedded platform runs one autoscaler: always
        leader. On Kubernetes a Lease decides."""
        if config is None:
            config = LoopConfig() if tick_s is None else LoopConfig(tick_s=tick_s)
        elif tick_s is not None and tick_s != config.tick_s:
            raise ValueError(
                f"tick_s={tick_s:g} disagrees with config.tick_s={config.tick_s:g}; give one"
            )
        self.bus = bus
        self.actuator = actuator
        self.clock = clock
        self.leader = leader
        self.config = config
        self._own_scraper = scrape is None
        self.scrape: Scraper = scrape or HttpScraper()
        self._own_lora = lora is None
        self.lora: LoraClient = lora or HttpLoraClient()
        self.metrics = AutoscalerMetrics()
        self.registry = self.metrics.registry
        self._deps = LoopDeps(
            bus=bus,
            actuator=actuator,
            scraper=self.scrape,
            config=config,
            clock=clock,
            metrics=self.metrics,
            leader=leader,
            lora=self.lora,
        )
        self._loops: dict[str, _RevisionLoop] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def running(self) -> AbstractAsyncContextManager[None]:
        return self._running()

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        subscribed = asyncio.Event()
        events = asyncio.create_task(self._follow(subscribed), name="autoscaler:events")
        leadership = asyncio.create_task(self._watch_leadership(), name="autoscaler:leadership")
        try:
            await subscribed.wait()
            snapshot = await self.bus.snapshot()
            await self._reconcile(snapshot.services)
            yield
        finally:
            for task in (events, leadership):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for task in self._tasks.values():
                task.cancel()
            for task in list(self._tasks.values()):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._tasks.clear()
            await asyncio.gather(*(loop.aclose() for loop in self._loops.values()))
            if self._own_scraper and isinstance(self.scrape, HttpScraper):
                await self.scrape.aclose()
            if self._own_lora and isinstance(self.lora, HttpLoraClient):
                await self.lora.aclose()

    async def _watch_leadership(self) -> None:
        """Wake every loop when leadership changes: a resting loop must republish its endpoints
        on taking over (what the old leader published may be stale) and stop writing on losing
        it. One ``leader()`` call per tick, whatever the number of revisions."""
        leading = self.leader()
        while True:
            await asyncio.sleep(self.config.tick_s)
            now = self.leader()
            if now != leading:
                leading = now
                for loop in self._loops.values():
                    loop.wake.set()

    async def _follow(self, subscribed: asyncio.Event) -> None:
        """Apply bus events until the bus closes; after an error, resubscribe and resync."""
        resync = False
        while True:
            try:
                await self._follow_once(subscribed, resync=resync)
                return
            except Exception:
                log.exception("bus events failed; resubscribing in 1s")
            subscribed.set()  # never hold start-up on a broken bus
            resync = True
            await asyncio.sleep(1.0)

    async def _follow_once(self, subscribed: asyncio.Event, *, resync: bool) -> None:
        stream = self.bus.events()
        iterator = stream.__aiter__()
        first = asyncio.ensure_future(iterator.__anext__())
        # Let the subscription register before the snapshot is taken, so no change falls between.
        for _ in range(3):
            await asyncio.sleep(0)
        subscribed.set()
        pending = first
        try:
            if resync:
                # Events may have been missed while unsubscribed: the snapshot is the truth.
                await self._reconcile((await self.bus.snapshot()).services)
            while True:
                try:
                    event = await pending
                except StopAsyncIteration:
                    return
                if isinstance(event, ServicesChanged):
                    await self._reconcile(event.services)
                elif isinstance(event, Poked):
                    loop = self._loops.get(event.revision)
                    if loop is not None:
                        loop.poke(event.adapter)
                elif isinstance(event, EndpointsChanged):
                    pass  # our own publications
                pending = asyncio.ensure_future(iterator.__anext__())
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await pending
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _reconcile(self, services: Sequence[ServiceSpec]) -> None:
        targets = _targets(services)
        for key in [k for k in self._loops if k not in targets]:
            loop = self._loops.pop(key)
            task = self._tasks.pop(key)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await loop.aclose()
            self.metrics.forget(key)
            if not self.leader():
                continue  # the leader stops its replicas and withdraws its endpoints
            await self.actuator.forget(key)
            await self.bus.publish_endpoints(RevisionEndpoints(key, ()))
            log.info("revision %s removed: replicas stopped", key)
        for key, target in targets.items():
            if key in self._loops:
                self._loops[key].update(target)
                continue
            loop = _RevisionLoop(target, self._deps)
            self._loops[key] = loop
            self._tasks[key] = asyncio.create_task(loop.run(), name=f"autoscaler:{key}")

    def statuses(self) -> list[RevisionStatus]:
        return [self._loops[k].status() for k in sorted(self._loops)]
