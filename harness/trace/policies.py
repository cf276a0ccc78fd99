"""The two scaling policies a simulated service runs under, behind one narrow seam.

``TorporPolicy`` is the product itself: ``autoscaler.decide.decide`` for how many and
``autoscaler.plan.plan`` for which (least-loaded first, taking back a draining replica), fed what
the product's loop sees every tick (vLLM's running + waiting and KV usage per ready replica, the
activators' queue and in-flight count). ``KpaPolicy`` is Knative's KPA (``harness.trace.kpa``):
fed per-second averages of the concurrency its queue-proxies and activator report, choosing
victims as the ReplicaSet does, never taking a terminating pod back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from autoscaler.actuator import Phase, Replica
from autoscaler.decide import Observation, ReplicaLoad, ScalerState, decide
from autoscaler.plan import StartRecord, plan
from harness.trace.kpa import (
    GRANULARITY_S,
    Buckets,
    KpaConfig,
    KpaState,
    Pod,
    kpa_decide,
    victims,
)
from harness.trace.replica import SimReplica
from torpor.spec import AutoscalingSpec


@dataclass(frozen=True, slots=True)
class Steps:
    start: int = 0
    stop: tuple[str, ...] = ()  # not-ready replicas removed at once
    drain: tuple[str, ...] = ()  # ready replicas that take no new work and stop once empty
    take_back: tuple[str, ...] = ()  # draining replicas put back in service


class Policy(Protocol):
    name: str
    tick_s: float

    def sample(self, now: float, dt: float, replicas: Sequence[SimReplica], held: int) -> None:
        """Called for every simulated slice of time (``dt`` long, starting at ``now``)."""

    def arrived(self) -> None:
        """A request reached the front door (the activator counts it)."""

    def tick(self, now: float, replicas: Sequence[SimReplica], held: int, poked: bool) -> Steps: ...


def _serving(replicas: Sequence[SimReplica], now: float) -> list[SimReplica]:
    return [r for r in replicas if r.ready(now) and not r.draining]


@dataclass
class TorporPolicy:
    name: str
    spec: AutoscalingSpec
    tick_s: float = 2.0
    state: ScalerState = field(default_factory=ScalerState)
    arrivals: int = 0  # requests the activator accepted since the last tick

    def sample(self, now: float, dt: float, replicas: Sequence[SimReplica], held: int) -> None:
        return None  # the product reads its gauges at each tick only

    def arrived(self) -> None:
        self.arrivals += 1

    def tick(self, now: float, replicas: Sequence[SimReplica], held: int, poked: bool) -> Steps:
        ready = _serving(replicas, now)
        starting = [r for r in replicas if not r.ready(now)]
        draining = [r for r in replicas if r.draining]
        obs = Observation(
            ready=tuple(
                ReplicaLoad(
                    r.name,
                    running=len(r.running),
                    waiting=len(r.waiting),
                    kv_cache_usage=r.kv_usage(),
                )
                for r in ready
            ),
            starting=len(starting),
            draining=len(draining),
            activator_queued=held,
            # The activator counts every request it proxies, draining replicas' too.
            activator_in_flight=sum(r.work for r in replicas),
            poked=poked,
            arrivals=self.arrivals,
        )
        self.arrivals = 0
        d, self.state = decide(self.spec, obs, self.state, now)
        as_replicas = [
            Replica(
                r.name,
                "sim",
                Phase.READY if r.ready(now) else Phase.STARTING,
                url=f"sim://{r.name}" if r.ready(now) else None,
                launched_at=r.launched,
            )
            for r in replicas
        ]
        order = [r.name for r in sorted(draining, key=lambda r: r.drain_began)]
        p = plan(d, obs, as_replicas, order, StartRecord(), now)
        return Steps(p.start, p.stop, p.drain, p.take_back)


@dataclass
class KpaPolicy:
    name: str
    cfg: KpaConfig
    tick_s: float = 2.0
    state: KpaState = field(default_factory=KpaState)
    stable: Buckets = field(init=False)
    panic: Buckets = field(init=False)
    _second: int = -1
    _area: float = 0.0  # concurrency x seconds within the current second
    _seen: bool = False  # any pod or held request this second (a scrape or an activator stat)

    def __post_init__(self) -> None:
        self.stable = Buckets(self.cfg.stable_window_s)
        self.panic = Buckets(self.cfg.panic_window_s)

    def arrived(self) -> None:
        return None  # the KPA sees requests only through the concurrency they add

    def _flush(self) -> None:
        if self._second >= 0 and self._seen:
            value = self._area / GRANULARITY_S
            self.stable.record(self._second, value)
            self.panic.record(self._second, value)
        self._area, self._seen = 0.0, False

    def sample(self, now: float, dt: float, replicas: Sequence[SimReplica], held: int) -> None:
        second = int(now // GRANULARITY_S)
        if second != self._second:
            self._flush()
            self._second = second
        ready = _serving(replicas, now)
        # Queue-proxies of ready, non-terminating pods, plus what the activator holds.
        self._area += (sum(r.work for r in ready) + held) * dt
        self._seen = self._seen or bool(ready) or held > 0

    def tick(self, now: float, replicas: Sequence[SimReplica], held: int, poked: bool) -> Steps:
        ready = _serving(replicas, now)
        live = [r for r in replicas if not r.draining]
        d, self.state = kpa_decide(
            self.cfg,
            self.state,
            now,
            ready=len(ready),
            current=len(live),
            stable=self.stable.average(now),
            panic_value=self.panic.average(now),
            poked=poked,
        )
        if d.desired > len(live):
            return Steps(start=d.desired - len(live))
        if d.desired < len(live):
            pods = [Pod(r.name, r.launched, r.ready_at if r.ready(now) else None) for r in live]
            gone = victims(pods, len(live) - d.desired)
            stop = tuple(n for n in gone if not any(r.name == n and r.ready(now) for r in live))
            drain = tuple(n for n in gone if n not in stop)
            return Steps(stop=stop, drain=drain)
        return Steps()
