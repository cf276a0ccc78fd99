"""One revision's LoRA adapters, placed: the state and the calls behind ``plan_adapters``.

``autoscaler.adapters`` decides (pure, ``now`` passed in); this executes for one revision's loop,
which owns one ``AdapterPlacer`` and calls it only while it leads:

- ``poke``: a request waits for an adapter (an activator's poke names it);
- ``learn``: ask each serving replica not seen before what it holds (vLLM's model list), so a
  restarted autoscaler or a new leader knows earlier loads;
- ``place``: load and unload through the ``LoraClient`` seam as the plan says; a failed load is
  kept as a failure (published with the endpoints, ``announce``) and not retried until a request
  asks for the adapter again (``held_back``);
- ``announce`` / ``rows``: what the endpoints and ``torpor status`` say about adapters;
- ``forget``: leadership lost; the new leader places them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from autoscaler.actuator import Replica
from autoscaler.adapters import (
    AdapterReplica,
    adapter_rows,
    adopted,
    held_back,
    last_uses,
    plan_adapters,
    with_adapters,
)
from autoscaler.decide import ReplicaLoad
from autoscaler.lora_client import LoraClient
from torpor.bus.base import ActivatorStats, RevisionEndpoints
from torpor.spec import LoraSpec
from torpor.status import AdapterStatus

log = logging.getLogger("torpor.autoscaler")


class AdapterPlacer:
    def __init__(self, key: str, client: LoraClient, clock: Callable[[], float]) -> None:
        self.key = key
        self._client = client
        self._clock = clock
        # What each serving replica holds; a replica with no entry has not been asked yet.
        self.loaded: dict[str, frozenset[str]] = {}
        self.unreadable: set[str] = set()  # replicas whose failed answer was logged once
        self.failures: dict[str, tuple[str, float]] = {}  # adapter -> (reason, failed at)
        self.poked_at: dict[str, float] = {}
        self.loading: set[tuple[str, str]] = set()  # (replica, adapter)
        self.wanted: set[str] = set()  # requests wait for these
        self.last_used: dict[str, float] = {}
        self.seen: dict[tuple[str, str], int] = {}  # (activator, adapter) -> requests_total

    def poke(self, adapter: str) -> None:
        # A poke is one request: it stamps the adapter's last use once, here, not on every tick
        # until it is answered (or an adapter whose requests left would never be forgotten).
        self.wanted.add(adapter)
        self.poked_at[adapter] = self.last_used[adapter] = self._clock()

    def forget(self) -> None:
        """Leadership lost: what this autoscaler knew is stale if it leads again."""
        self.loaded.clear()
        self.failures.clear()

    def announce(self, message: RevisionEndpoints) -> RevisionEndpoints:
        """The endpoints with each replica's adapters and the adapters whose load failed."""
        failures = {a: reason for a, (reason, _) in self.failures.items()}
        return with_adapters(message, self.loaded, failures)

    def holders(self, lora: LoraSpec) -> dict[str, int]:
        """Per declared adapter, the replicas that hold it loaded (for the metrics)."""
        return {
            a.name: sum(a.name in names for names in self.loaded.values()) for a in lora.adapters
        }

    def rows(self, lora: LoraSpec | None) -> tuple[AdapterStatus, ...]:
        failures = {a: reason for a, (reason, _) in self.failures.items()}
        return adapter_rows(lora, self.loaded, self.loading, failures)

    async def learn(self, lora: LoraSpec, ready: Sequence[Replica], now: float) -> None:
        """Ask each serving replica not seen before which adapters it holds (vLLM's model list):
        after a restart or a leader change this autoscaler knows nothing of earlier loads."""
        new = [r for r in ready if r.url and r.replica_id not in self.loaded]

        async def one(r: Replica) -> frozenset[str]:
            try:
                found = await self._client.loaded(r.url or "")
            except Exception as e:
                # Unknown: left out of placement, asked again next tick.
                if r.replica_id not in self.unreadable:
                    self.unreadable.add(r.replica_id)
                    log.warning(
                        "revision %s: cannot list the adapters on %s (asking again): %s",
                        self.key,
                        r.replica_id,
                        e,
                    )
                return frozenset()
            self.unreadable.discard(r.replica_id)
            self.loaded[r.replica_id] = found
            if found:
                log.info(
                    "revision %s: replica %s holds adapters %s",
                    self.key,
                    r.replica_id,
                    ", ".join(sorted(found)),
                )
            return found

        found = await asyncio.gather(*(one(r) for r in new))
        declared = {a.name for a in lora.adapters}
        self.last_used = adopted(self.last_used, frozenset().union(*found), declared, now)

    async def place(
        self,
        lora: LoraSpec,
        ready: Sequence[Replica],
        loads: Sequence[ReplicaLoad],
        stats: Sequence[ActivatorStats],
        now: float,
    ) -> bool | None:
        """Load and unload as ``plan_adapters`` says. None: nothing changed; else whether the
        endpoints must be published even if they read as before (a new failure)."""
        declared = {a.name for a in lora.adapters}
        self.failures = {a: f for a, f in self.failures.items() if a in declared}
        await self.learn(lora, ready, now)
        # Only replicas whose adapters are known take part (an unknown one is asked next tick).
        urls = {r.replica_id: r.url or "" for r in ready if r.url and r.replica_id in self.loaded}
        self.loaded = {k: v for k, v in self.loaded.items() if k in urls}
        used: set[str] = set()
        active: set[str] = set()
        for s in stats:  # fresh ones: the caller filters
            for t in s.adapters:
                seen_key = (s.activator_id, t.name)
                if t.active > 0:
                    active.add(t.name)
                if t.active > 0 or self.seen.get(seen_key) != t.requests_total:
                    used.add(t.name)
                self.seen[seen_key] = t.requests_total
        self.last_used = last_uses(self.last_used, used & declared, now)
        failed_at = {a: at for a, (_, at) in self.failures.items()}
        wanted = (self.wanted | active) & declared
        wanted -= held_back(failed_at, self.poked_at)
        by_id = {x.replica_id: x for x in loads}
        replicas = [
            AdapterReplica(
                rid,
                self.loaded.get(rid, frozenset()),
                overloaded=(by_id[rid].waiting or 0) > 0 if rid in by_id else False,
                work=(by_id[rid].work or 0.0) if rid in by_id else 0.0,
            )
            for rid in sorted(urls)
        ]
        steps = plan_adapters(
            replicas,
            wanted,
            self.last_used,
            max_loras=lora.max_loras,
            idle_window_s=lora.idle_window_s,
            now=now,
            declared=declared,
        )
        for rid, name in steps.unloads:
            try:
                await self._client.unload(urls[rid], name)
            except Exception as e:
                log.warning("revision %s: unloading adapter %s on %s: %s", self.key, name, rid, e)
                continue
            self.loaded[rid] = self.loaded.get(rid, frozenset()) - {name}
            why = "idle" if name in declared else "not declared"
            log.info("revision %s: adapter %s unloaded from %s (%s)", self.key, name, rid, why)
        failed_before = dict(self.failures)
        await asyncio.gather(*(self._load(lora, urls[rid], rid, name) for rid, name in steps.loads))
        held = {n for names in self.loaded.values() for n in names}
        # A poke is answered once its adapter is loaded somewhere, or forgotten once nothing
        # has asked for it for an idle window (its requests timed out or left).
        self.wanted = {
            a
            for a in self.wanted - held
            if now - self.last_used.get(a, now) < lora.idle_window_s
        }
        if not (steps.loads or steps.unloads):
            return None
        return self.failures != failed_before

    async def _load(self, lora: LoraSpec, url: str, rid: str, name: str) -> None:
        source = lora.adapter(name)
        if source is None:
            return
        self.loading.add((rid, name))
        try:
            await self._client.load(url, name, source.source)
        except Exception as e:
            # Published: the requests held for it get the reason now, and it is not tried
            # again until a request asks for it after this (``held_back``).
            reason = str(e) or type(e).__name__
            log.warning(
                "revision %s: loading adapter %s on %s failed (not retried until requested "
                "again): %s",
                self.key,
                name,
                rid,
                reason,
            )
            self.failures[name] = (reason, self._clock())
            self.wanted.discard(name)
            return
        finally:
            self.loading.discard((rid, name))
        self.failures.pop(name, None)
        self.loaded[rid] = self.loaded.get(rid, frozenset()) | {name}
        self.last_used[name] = self._clock()
        log.info("revision %s: adapter %s loaded on %s", self.key, name, rid)
