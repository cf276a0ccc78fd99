"""Which replica holds which LoRA adapter (issue 16): a pure plan, ``now`` passed in.

The autoscaler owns placement. Activators hold a request for an adapter that no serving replica
lists in the published endpoints and poke the autoscaler naming it; the loop asks ``plan_adapters``
what to load and unload, calls vLLM's ``/v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` on
the replicas (``autoscaler.lora_client``) and republishes the endpoints with each replica's
adapters. One autoscaler (the leader) decides for every activator, so concurrent first requests
for one adapter, at any number of activators, cause one load.

The rules:

- **unload** an adapter unused for its revision's idle window (no request held or in flight
  for it, no new one accepted: the activators' per-adapter stats, and pokes), unless it is wanted;
- **load** a wanted adapter (requests wait for it) that no serving replica holds, or whose every
  holder is overloaded (vLLM has requests waiting there), on a replica without it: one with a
  free slot (``--max-loras``) first, the least loaded and fewest adapters first; if every
  replica is full, evict the least recently used adapter that nobody waits for;
- at most one load per adapter per plan, and never more than ``max_loras`` per replica;
- **unload** at once an adapter the spec no longer declares (found on a replica after a restart
  or a spec change).

What a replica holds is learned from the replica (vLLM's ``GET /v1/models``) when the loop first
sees it serving, so adapters loaded before an autoscaler restart or a leader change are still
unloaded; ``adopted`` gives those an idle window from then.

A failed load is published with the endpoints (``RevisionEndpoints.adapter_failures``), which
answers the requests held for that adapter at once, and the adapter is not loaded again until a
request asks for it after that (``held_back``: a poke later than the failure); a load that works
clears it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from torpor.bus.base import AdapterFailure, RevisionEndpoints
from torpor.spec import LoraSpec
from torpor.status import AdapterStatus


@dataclass(frozen=True, slots=True)
class AdapterReplica:
    """A serving replica as placement sees it."""

    replica_id: str
    loaded: frozenset[str]
    overloaded: bool = False  # vLLM reports requests waiting there
    work: float = 0.0  # vLLM's running + waiting, for choosing the least loaded


@dataclass(frozen=True, slots=True)
class AdapterPlan:
    loads: tuple[tuple[str, str], ...] = ()  # (replica_id, adapter)
    unloads: tuple[tuple[str, str], ...] = ()  # (replica_id, adapter)


def plan_adapters(
    replicas: Sequence[AdapterReplica],
    wanted: Collection[str],
    last_used: Mapping[str, float],
    *,
    max_loras: int,
    idle_window_s: float,
    now: float,
    declared: Collection[str] | None = None,
) -> AdapterPlan:
    """What to load and unload now; see the module's rules. ``declared``: the spec's adapters
    (None: every adapter found counts as declared)."""
    holding = {r.replica_id: set(r.loaded) for r in replicas}
    unloads: list[tuple[str, str]] = []
    for r in replicas:
        for adapter in sorted(r.loaded):
            used = last_used.get(adapter)
            idle = used is None or now - used >= idle_window_s
            gone = declared is not None and adapter not in declared
            if gone or (idle and adapter not in wanted):
                unloads.append((r.replica_id, adapter))
                holding[r.replica_id].discard(adapter)
    loads: list[tuple[str, str]] = []
    by_id = {r.replica_id: r for r in replicas}
    for adapter in sorted(wanted):
        holders = [by_id[i] for i, held in holding.items() if adapter in held]
        if holders and any(not h.overloaded for h in holders):
            continue
        others = [r for r in replicas if adapter not in holding[r.replica_id]]
        if not others:
            continue
        order = sorted(
            others,
            key=lambda r: (r.overloaded, r.work, len(holding[r.replica_id]), r.replica_id),
        )
        target = next((r for r in order if len(holding[r.replica_id]) < max_loras), None)
        if target is None:
            target, victim = _evict(order, holding, wanted, last_used)
            if target is None or victim is None:
                continue
            unloads.append((target.replica_id, victim))
            holding[target.replica_id].discard(victim)
        loads.append((target.replica_id, adapter))
        holding[target.replica_id].add(adapter)
    return AdapterPlan(tuple(loads), tuple(unloads))


def _evict(
    order: Sequence[AdapterReplica],
    holding: Mapping[str, set[str]],
    wanted: Collection[str],
    last_used: Mapping[str, float],
) -> tuple[AdapterReplica | None, str | None]:
    """The replica (in preference order) and its least recently used adapter nobody waits for."""
    for r in order:
        spare = [a for a in holding[r.replica_id] if a not in wanted]
        if spare:
            return r, min(spare, key=lambda a: (last_used.get(a, float("-inf")), a))
    return None, None


def last_uses(
    previous: Mapping[str, float],
    used_now: Collection[str],
    now: float,
) -> dict[str, float]:
    """``previous`` with every adapter in ``used_now`` stamped ``now``."""
    out = dict(previous)
    for adapter in used_now:
        out[adapter] = now
    return out


def adopted(
    last_used: Mapping[str, float],
    found: Collection[str],
    declared: Collection[str],
    now: float,
) -> dict[str, float]:
    """``last_used`` with each declared adapter just found on a replica, and never used as far as
    this autoscaler knows (it restarted, or just took over), stamped ``now``: it gets its idle
    window from when it was found instead of being unloaded at once."""
    out = dict(last_used)
    for adapter in found:
        if adapter in declared and adapter not in out:
            out[adapter] = now
    return out


def held_back(failed_at: Mapping[str, float], poked_at: Mapping[str, float]) -> frozenset[str]:
    """Adapters not to load now: their last load failed at ``failed_at`` (when the failure was
    published) and no request has poked for them since. Held requests were answered with the
    failure; the next request for the adapter pokes, and that load is the retry."""
    return frozenset(
        a for a, at in failed_at.items() if poked_at.get(a, float("-inf")) <= at
    )


def with_adapters(
    message: RevisionEndpoints,
    loaded: Mapping[str, frozenset[str]],
    failures: Mapping[str, str] | None = None,
) -> RevisionEndpoints:
    """The endpoints to publish, each replica listing the adapters loaded there, and the
    adapters whose last load failed (adapter -> the replica's answer)."""
    if failures:
        message = replace(
            message,
            adapter_failures=tuple(AdapterFailure(a, r) for a, r in sorted(failures.items())),
        )
    if not loaded:
        return message
    endpoints = tuple(
        replace(e, adapters=tuple(sorted(loaded.get(e.replica_id, ()))))
        for e in message.endpoints
    )
    return replace(message, endpoints=endpoints)


def adapter_rows(
    lora: LoraSpec | None,
    loaded: Mapping[str, frozenset[str]],
    loading: Collection[tuple[str, str]],
    failures: Mapping[str, str] | None = None,
) -> tuple[AdapterStatus, ...]:
    """What ``torpor status`` shows per adapter: a row per replica holding or loading it, or one
    ``failed`` row (its last load failed: ``failures``, adapter -> reason) or ``idle`` row."""
    if lora is None:
        return ()
    rows: list[AdapterStatus] = []
    for adapter in lora.adapters:
        mine = [
            AdapterStatus(adapter.name, "loaded", rid)
            for rid, names in sorted(loaded.items())
            if adapter.name in names
        ]
        mine += [
            AdapterStatus(adapter.name, "loading", rid)
            for rid, name in sorted(loading)
            if name == adapter.name
        ]
        reason = (failures or {}).get(adapter.name)
        idle = AdapterStatus(adapter.name, "idle" if reason is None else "failed", reason=reason)
        rows += mine or [idle]
    return tuple(rows)
