"""The autoscaler's impure half: one loop per revision that observes, decides and actuates.

Each revision has its own asyncio task, so a slow scrape or a failing replica of one never
delays another. A tick runs every ``tick_s``, and at once when an activator pokes the revision.
A tick reads the actuator's replicas, scrapes the ready ones, sums fresh activator stats from the
bus, calls the pure ``decide`` and then starts replicas, or drains one and only then stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace

from autoscaler.actuator import Actuator, Phase, Replica
from autoscaler.decide import Decision, Observation, ReplicaLoad, ScalerState, decide
from autoscaler.metrics import AutoscalerMetrics
from autoscaler.scrape import HttpScraper, Scraper
from torpor.bus import (
    Bus,
    Endpoint,
    EndpointsChanged,
    Poked,
    RevisionEndpoints,
    ServicesChanged,
)
from torpor.spec import RevisionSpec, ServiceSpec
from torpor.status import ColdStart, RevisionStatus

log = logging.getLogger("torpor.autoscaler")


@dataclass(frozen=True, slots=True)
class LoopConfig:
    tick_s: float = 2.0
    stats_fresh_s: float = 5.0  # activator stats older than this are ignored
    drain_poll_s: float = 0.5
    ready_poll_s: float = 0.05  # how often starting replicas are checked for readiness
    max_failures: int = 5  # consecutive start-up failures before the revision is marked failed
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0


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


def always_leader() -> bool:
    """The embedded platform's leadership: one autoscaler, always in charge."""
    return True


class _RevisionLoop:
    def __init__(self, owner: Autoscaler, target: _Target) -> None:
        self._o = owner
        self.target = target
        self.key = target.spec.ref.key
        self.wake = asyncio.Event()
        self.poked = False
        self.state = ScalerState()
        self.decision = Decision(desired=0, reason="not yet decided")
        self.obs = Observation()
        self.failures = 0
        self.failed_reason: str | None = None
        self.last_error: str | None = None
        self.backoff_until = 0.0
        self.draining: dict[str, asyncio.Task[None]] = {}
        self.stopping: set[str] = set()  # drained, being stopped
        self.published: RevisionEndpoints | None = None
        self.last_cold_start: ColdStart | None = None
        self._seen_ready: set[str] = set()
        # As of the last tick (None before the first); a standby observes but never writes.
        self.leading: bool | None = None

    @property
    def spec(self) -> RevisionSpec:
        return self.target.autoscaling()

    def update(self, target: _Target) -> None:
        if target.spec != self.target.spec:
            # A changed spec gets a fresh chance after being marked failed.
            self.failures, self.failed_reason, self.backoff_until = 0, None, 0.0
        self.target = target

    def poke(self) -> None:
        self.poked = True
        self.wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("revision %s: tick failed", self.key)
            await self._sleep()
            self.wake.clear()

    async def _sleep(self) -> None:
        """Until the next tick or a poke; while replicas start, publish each one the moment it
        is ready, since requests held at zero wait on exactly that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._o.config.tick_s

        def starting() -> set[str]:
            replicas = self._o.actuator.replicas(self.key)
            return {r.replica_id for r in replicas if r.phase is Phase.STARTING}

        while (remaining := deadline - loop.time()) > 0:
            before = starting()
            timeout = min(remaining, self._o.config.ready_poll_s) if before else remaining
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # races with the event being set, and then the loop never stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
                return
            if before - starting():
                return  # one became ready (or failed, or went): tick now

    async def tick(self) -> None:
        o = self._o
        spec = self.spec
        was_leading, self.leading = self.leading, o.leader()
        if was_leading and not self.leading:
            # The new leader decides about them: a standby's drain would never stop them.
            await self.aclose()
        replicas = list(o.actuator.replicas(self.key))
        if self.leading:
            await self._handle_failures(replicas)
        if self.leading and was_leading is False:
            # Taking over: what the previous leader published may be stale; ours replaces it.
            await self._publish([r for r in replicas if r.phase is not Phase.FAILED], force=True)
        replicas = [r for r in replicas if r.phase is not Phase.FAILED]
        for r in replicas:
            if r.phase is Phase.READY and r.replica_id not in self._seen_ready:
                self._seen_ready.add(r.replica_id)
                self.failures = 0
                self.last_error = None
            cold = r.cold_start
            if cold is not None and (
                self.last_cold_start is None or cold.started_at >= self.last_cold_start.started_at
            ):
                self.last_cold_start = cold
        ready = self._serving(replicas)
        starting = [r for r in replicas if r.phase is Phase.STARTING]
        await self._publish(replicas)

        loads = await self._scrape(ready)
        queued, in_flight = await o.activator_load(self.key)
        poked, self.poked = self.poked, False
        self.obs = Observation(
            ready=tuple(loads),
            starting=len(starting),
            draining=len(self.draining) + len(self.stopping),
            activator_queued=queued,
            activator_in_flight=in_flight,
            poked=poked,
        )
        now = o.clock()
        before = self.decision.desired
        self.decision, self.state = decide(spec.autoscaling, self.obs, self.state, now)
        d = self.decision
        current = self.obs.current

        if not self.leading:
            o.metrics.record(
                self.key, d, ready=len(ready), starting=len(starting), draining=len(self.draining)
            )
            return
        if poked and self.failed_reason is not None:
            # Waiters held at zero get the reason at once instead of their timeout.
            await self._publish(replicas, force=True)
        if d.desired > current:
            await self._scale_up(spec, d, current, now)
        elif d.desired < current:
            await self._scale_down(spec, d, starting, ready, loads)
        elif d.desired != before:
            log.info("revision %s: desired %d (%s)", self.key, d.desired, d.reason)
        o.metrics.record(
            self.key, d, ready=len(ready), starting=len(starting), draining=len(self.draining)
        )

    async def _scale_up(self, spec: RevisionSpec, d: Decision, current: int, now: float) -> None:
        need = d.desired - current
        # A replica still draining has a loaded model: take it back instead of a cold start.
        undrained = list(self.draining)[:need]
        for replica_id in undrained:
            task = self.draining.pop(replica_id)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            need -= 1
            log.info(
                "revision %s: keeping draining replica %s (%s)", self.key, replica_id, d.reason
            )
        if undrained:
            await self._publish(list(self._o.actuator.replicas(self.key)))
        if need <= 0:
            return
        if self.failed_reason is not None:
            return
        if now < self.backoff_until:
            log.info(
                "revision %s: want %d more, backing off %.1fs after %d failures",
                self.key,
                need,
                self.backoff_until - now,
                self.failures,
            )
            return
        log.info(
            "revision %s: %d -> %d, starting %d (%s)", self.key, current, d.desired, need, d.reason
        )
        if self._o.leader():
            await self._o.actuator.start(spec, need)

    async def _scale_down(
        self,
        spec: RevisionSpec,
        d: Decision,
        starting: list[Replica],
        ready: list[Replica],
        loads: list[ReplicaLoad],
    ) -> None:
        excess = len(starting) + len(ready) - d.desired
        log.info(
            "revision %s: %d -> %d (%s)", self.key, len(starting) + len(ready), d.desired, d.reason
        )
        # Replicas still starting hold no requests: they go first, newest first.
        for r in sorted(starting, key=lambda r: r.launched_at, reverse=True)[:excess]:
            if not self._o.leader():
                return
            await self._o.actuator.stop(spec, r.replica_id)
            excess -= 1
        work = {x.replica_id: x.work for x in loads}
        # Least work first; an unknown replica is assumed busy.
        order = sorted(
            ready, key=lambda r: (work.get(r.replica_id) is None, work.get(r.replica_id) or 0.0)
        )
        for r in order[: max(0, excess)]:
            self.draining[r.replica_id] = asyncio.create_task(
                self._drain(r), name=f"drain:{r.replica_id}"
            )
        await self._publish(list(self._o.actuator.replicas(self.key)))

    async def _drain(self, replica: Replica) -> None:
        """Wait until the replica holds no request (bounded by the revision's timeout), stop it."""
        o = self._o
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.target.spec.timeout_s
        try:
            while loop.time() < deadline:
                try:
                    if await self._drained(replica):
                        break
                except Exception:
                    # A bus or scrape hiccup must not strand the replica half-drained.
                    log.exception("revision %s: checking drain of %s", self.key, replica.replica_id)
                await asyncio.sleep(o.config.drain_poll_s)
            else:
                log.warning(
                    "revision %s: replica %s still busy after %gs; stopping it",
                    self.key,
                    replica.replica_id,
                    self.target.spec.timeout_s,
                )
        except asyncio.CancelledError:
            # Taken back by a scale-up (or the autoscaler is stopping): the replica lives on.
            if self.draining.get(replica.replica_id) is asyncio.current_task():
                del self.draining[replica.replica_id]
            raise
        if not o.leader():
            # Leadership was lost while draining: the replica lives on for the new leader.
            self.draining.pop(replica.replica_id, None)
            return
        # Past this point the replica goes whatever happens: it can no longer be taken back.
        self.draining.pop(replica.replica_id, None)
        self.stopping.add(replica.replica_id)
        try:
            await o.actuator.stop(self.target.spec, replica.replica_id)
        except Exception:
            log.exception("revision %s: stopping %s", self.key, replica.replica_id)
        finally:
            self.stopping.discard(replica.replica_id)
        with contextlib.suppress(Exception):
            await self._publish(list(o.actuator.replicas(self.key)))
        self.wake.set()

    async def _drained(self, replica: Replica) -> bool:
        o = self._o
        current = {r.replica_id: r for r in o.actuator.replicas(self.key)}
        now = current.get(replica.replica_id)
        if now is None or now.phase is Phase.FAILED:
            return True
        assert replica.url is not None
        load = await o.scrape.scrape(replica.replica_id, replica.url)
        if load is None or load.work is None or load.work > 0:
            return False
        # vLLM may have finished while the activator still streams the last bytes: the
        # activators' in-flight must be covered by the replicas that keep serving.
        _, in_flight = await o.activator_load(self.key)
        if in_flight == 0:
            return True
        others = [r for r in self._serving(list(current.values())) if r.url]
        loads = await asyncio.gather(*(o.scrape.scrape(r.replica_id, r.url or "") for r in others))
        if any(x is None or x.work is None for x in loads):
            return False
        return in_flight <= sum(x.work or 0.0 for x in loads if x is not None)

    async def _scrape(self, ready: list[Replica]) -> list[ReplicaLoad]:
        async def one(r: Replica) -> ReplicaLoad:
            load = await self._o.scrape.scrape(r.replica_id, r.url or "")
            return load or ReplicaLoad(r.replica_id)

        return list(await asyncio.gather(*(one(r) for r in ready if r.url)))

    async def _handle_failures(self, replicas: list[Replica]) -> None:
        for r in replicas:
            if r.phase is not Phase.FAILED:
                continue
            was_ready = r.replica_id in self._seen_ready
            self._seen_ready.discard(r.replica_id)
            error = r.error or "replica failed"
            task = self.draining.pop(r.replica_id, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._o.leader():
                await self._o.actuator.stop(self.target.spec, r.replica_id)
            if was_ready:
                # A crash after serving is not a start-up failure: it must not be published as
                # the revision's failure (that answers every waiter at once with an error); the
                # waiters wait for the replacement instead.
                log.warning(
                    "revision %s: replica %s died: %s",
                    self.key,
                    r.replica_id,
                    error.splitlines()[0],
                )
                continue
            self.last_error = error
            self.failures += 1
            delay = min(
                self._o.config.backoff_cap_s,
                self._o.config.backoff_base_s * 2 ** (self.failures - 1),
            )
            self.backoff_until = self._o.clock() + delay
            log.warning(
                "revision %s: replica %s failed to start (%d in a row, next try in %.1fs): %s",
                self.key,
                r.replica_id,
                self.failures,
                delay,
                error.splitlines()[0],
            )
            if self.failures >= self._o.config.max_failures and self.failed_reason is None:
                self.failed_reason = f"{self.failures} start-up failures in a row; last: {error}"
                log.error("revision %s: marked failed until its spec changes", self.key)
            await self._publish(replicas, force=True)

    def _serving(self, replicas: list[Replica]) -> list[Replica]:
        gone = self.draining.keys() | self.stopping
        return [r for r in replicas if r.phase is Phase.READY and r.replica_id not in gone]

    async def _publish(self, replicas: list[Replica], force: bool = False) -> None:
        endpoints = tuple(
            Endpoint(r.replica_id, r.url, draining=r.replica_id in self.draining)
            for r in sorted(replicas, key=lambda r: r.replica_id)
            if r.phase is Phase.READY and r.url and r.replica_id not in self.stopping
        )
        serving = any(not e.draining for e in endpoints)
        failure = None if serving else (self.failed_reason or self.last_error)
        message = RevisionEndpoints(self.key, endpoints, failure)
        last = self.published
        if (
            not force
            and last is not None
            and (last.endpoints, last.failure) == (endpoints, failure)
        ):
            return
        if last is None and not endpoints and failure is None and not force:
            return
        if not self._o.leader():
            return
        self.published = message
        await self._o.bus.publish_endpoints(message)

    def status(self) -> RevisionStatus:
        replicas = list(self._o.actuator.replicas(self.key))
        ready = self._serving(replicas)
        starting = [r for r in replicas if r.phase is Phase.STARTING]
        spec = self.target.spec
        if self.failed_reason is not None:
            state, reason = "failed", self.failed_reason
        elif ready:
            state, reason = "ready", None
        elif starting:
            state, reason = "starting", self.last_error
        else:
            state, reason = "scaled-to-zero", self.last_error
        return RevisionStatus(
            revision=self.key,
            namespace=spec.ref.namespace,
            service=spec.service,
            name=spec.ref.name,
            desired_replicas=self.decision.desired,
            ready_replicas=len(ready),
            starting_replicas=len(starting),
            draining_replicas=len(self.draining) + len(self.stopping),
            queued_requests=self.obs.activator_queued,
            in_flight_requests=self.obs.activator_in_flight,
            state=state,
            reason=reason,
            decision=self.decision.reason,
            panic=self.decision.panic,
            last_cold_start=self.last_cold_start,
            replicas=tuple(r.url for r in ready if r.url),
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
        tick_s: float = 2.0,
        scrape: Scraper | None = None,
        config: LoopConfig | None = None,
        leader: Callable[[], bool] = always_leader,
    ) -> None:
        """``leader`` says whether this replica of the autoscaler may write right now: every
        endpoint publication and every start, stop or drain is gated on it. A standby keeps
        observing and deciding, so it can take over at once, and republishes every revision's
        endpoints on its first tick as leader. The embedded platform runs one autoscaler: always
        leader. On Kubernetes a Lease decides."""
        self.bus = bus
        self.leader = leader
        self.actuator = actuator
        self.clock = clock
        self.config = replace(config or LoopConfig(), tick_s=tick_s)
        self._own_scraper = scrape is None
        self.scrape: Scraper = scrape or HttpScraper()
        self.metrics = AutoscalerMetrics()
        self.registry = self.metrics.registry
        self._loops: dict[str, _RevisionLoop] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def running(self) -> AbstractAsyncContextManager[None]:
        return self._running()

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        subscribed = asyncio.Event()
        events = asyncio.create_task(self._follow(subscribed), name="autoscaler:events")
        try:
            await subscribed.wait()
            snapshot = await self.bus.snapshot()
            await self._reconcile(snapshot.services)
            yield
        finally:
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events
            for task in self._tasks.values():
                task.cancel()
            for task in list(self._tasks.values()):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._tasks.clear()
            await asyncio.gather(*(loop.aclose() for loop in self._loops.values()))
            if self._own_scraper and isinstance(self.scrape, HttpScraper):
                await self.scrape.aclose()

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
                        loop.poke()
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
            loop = _RevisionLoop(self, target)
            self._loops[key] = loop
            self._tasks[key] = asyncio.create_task(loop.run(), name=f"autoscaler:{key}")

    async def activator_load(self, key: str) -> tuple[int, int]:
        """Queued and in-flight requests for a revision, summed over activators with fresh stats."""
        snapshot = await self.bus.snapshot()
        horizon = self.clock() - self.config.stats_fresh_s
        queued = in_flight = 0
        for s in snapshot.stats:
            if s.revision == key and s.at >= horizon:
                queued += s.queued
                in_flight += s.in_flight
        return queued, in_flight

    def statuses(self) -> list[RevisionStatus]:
        return [self._loops[k].status() for k in sorted(self._loops)]
