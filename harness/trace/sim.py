"""Replay one service's requests through simulated replicas under one policy.

The activator is modelled as both front doors behave: a request goes to the serving replica with
the least work; while none serves it is held (and the first one held at zero pokes the policy).
Time advances in ``dt`` slices while any replica has work or a request is held, and jumps to the
next arrival, tick or replica start otherwise, so a sparse service costs little to simulate.
Replica-seconds count every replica from launch until it stops, starting and draining ones too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.trace.azure import TraceRequest
from harness.trace.policies import Policy
from harness.trace.replica import ReplicaModel, SimReplica

DT_S = 0.05
TIMELINE_S = 10.0


@dataclass
class ServiceRun:
    policy: str
    waits: list[float] = field(default_factory=list)  # arrival to first token, per request
    at_zero: list[bool] = field(default_factory=list)  # arrived while no replica served
    replica_seconds: float = 0.0
    cold_starts: int = 0
    preemptions: int = 0
    unfinished: int = 0
    # (t, replicas incl. starting and draining, serving, requests waiting for a first token)
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)


def simulate(
    policy: Policy,
    trace: Sequence[TraceRequest],
    model: ReplicaModel,
    *,
    end_s: float | None = None,
    cold_start_offset: int = 0,
    timeline: bool = False,
) -> ServiceRun:
    """Replay ``trace`` (sorted by arrival) under ``policy``; runs until every request finished
    (at most an hour past ``end_s``, the trace's last arrival by default)."""
    run = ServiceRun(policy.name)
    end = end_s if end_s is not None else (trace[-1].arrival if trace else 0.0)
    replicas: list[SimReplica] = []
    held: deque[tuple[int, TraceRequest]] = deque()
    waits: dict[int, float] = {}
    at_zero: dict[int, bool] = {}
    n_started = 0
    next_tick = 0.0
    next_line = 0.0
    i = 0
    now = 0.0

    def serving() -> list[SimReplica]:
        return [r for r in replicas if r.ready(now) and not r.draining]

    def apply(steps_poked: bool) -> None:
        nonlocal n_started
        steps = policy.tick(now, replicas, len(held), steps_poked)
        by_name = {r.name: r for r in replicas}
        for name in steps.take_back:
            by_name[name].draining = False
        for _ in range(steps.start):
            cold = model.cold_start_s[(cold_start_offset + n_started) % len(model.cold_start_s)]
            n_started += 1
            replicas.append(SimReplica(f"r{n_started}", model, now, now + cold))
            run.cold_starts += 1
        for name in steps.stop:
            if name in by_name:
                replicas.remove(by_name[name])
        for name in steps.drain:
            by_name[name].draining, by_name[name].drain_began = True, now

    while True:
        busy = bool(held) or any(r.work for r in replicas)
        if i >= len(trace) and not busy and now >= end and not replicas:
            break
        if now > end + 3600:
            break
        # Arrivals up to now.
        while i < len(trace) and trace[i].arrival <= now:
            req = trace[i]
            policy.arrived()
            targets = serving()
            if targets:
                min(targets, key=lambda r: r.work).add(req, i)
                at_zero[i] = False
            else:
                held.append((i, req))
                at_zero[i] = True
                if not any(not r.draining for r in replicas):
                    apply(True)
            i += 1
        while held and serving():
            rid, req = held.popleft()
            min(serving(), key=lambda r: r.work).add(req, rid)
        if now >= next_tick:
            apply(False)
            next_tick = now - (now % policy.tick_s) + policy.tick_s
        busy = bool(held) or any(r.work for r in replicas)
        if busy:
            dt = DT_S
        else:
            # Nothing to compute: jump to the next event.
            events = [next_tick]
            if i < len(trace):
                events.append(trace[i].arrival)
            events += [r.ready_at for r in replicas if r.ready_at > now]
            if not replicas and not held:
                # At zero with nothing held: ticks change nothing until the next request.
                events = [trace[i].arrival] if i < len(trace) else [max(now, end) + policy.tick_s]
            dt = max(DT_S, min(events) - now)
        policy.sample(now, dt, replicas, len(held))
        for r in replicas:
            if r.ready(now):
                for seq in r.advance(now, dt):
                    if seq.first_token is not None:
                        waits[seq.rid] = seq.first_token - seq.req.arrival
        stopped = [r for r in replicas if r.draining and r.work == 0]
        run.replica_seconds += len(replicas) * dt
        for r in stopped:
            run.preemptions += r.preemptions
            replicas.remove(r)
        if timeline and now >= next_line:
            queued = len(held) + sum(
                sum(1 for s in r.waiting if s.first_token is None) for r in replicas
            )
            run.timeline.append((round(now, 1), len(replicas), len(serving()), queued))
            next_line = now - (now % TIMELINE_S) + TIMELINE_S
        now += dt
    run.preemptions += sum(r.preemptions for r in replicas)
    run.waits = [waits[k] for k in sorted(waits)]
    run.at_zero = [at_zero[k] for k in sorted(waits)]
    run.unfinished = len(trace) - len(waits)
    return run
