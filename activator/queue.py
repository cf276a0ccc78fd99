"""Holding requests for one revision until a replica has room: a bounded FIFO of waiters.

A request asks its revision's queue for a backend. If no one is waiting and a serving replica
has room it gets one at once; otherwise it waits, in arrival order, bounded in count (the
revision's ``queue_depth``) and in time (its ``timeout_s``). The first waiter while the revision
has no serving replica pokes the autoscaler at once rather than waiting for the next stats tick.
A released slot or a new set of endpoints hands backends to waiters front first. A published
failure answers every waiter with a short reason (``failure_reason``: the first line of the
runtime's error, e.g. "exited with code 2"); the rest of it, the runtime's log tail with its
tracebacks, paths and expanded values, is for the operator only (``torpor status`` and this
activator's log), never for a caller. A LoRA adapter's failed load (``adapter_failures``) answers
the waiters for that adapter alone, the same way, while no serving replica lists it.

A revision in a crash loop (``RevisionEndpoints.crash_loop``: its replicas keep dying before or
soon after ready, and the autoscaler waits before the next start) answers its waiters and every
new request at once with ``ReplicaCrashLoop`` (503, ``Retry-After``) until the published
``retry_at`` (wall clock); after it, a request is held and pokes as at zero, which is what starts
the next try.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from activator.balancer import Backend, pick
from activator.errors import (
    AdapterFailed,
    QueueFull,
    ReplicaCrashLoop,
    RevisionFailed,
    WaitTimeout,
)
from torpor.bus.base import AdapterTraffic, CrashLoop, RevisionEndpoints
from torpor.spec import DEFAULT_QUEUE_DEPTH, DEFAULT_TIMEOUT_S, RevisionSpec


class Poke(Protocol):
    """The bus's ``poke``: the revision, and the LoRA adapter a request waits for, if any."""

    def __call__(self, revision: str, adapter: str | None = None) -> Awaitable[None]: ...

log = logging.getLogger("torpor.activator")


@dataclass(frozen=True, slots=True)
class QueueLimits:
    depth: int = DEFAULT_QUEUE_DEPTH
    timeout_s: float = DEFAULT_TIMEOUT_S
    container_concurrency: int = 0

    @classmethod
    def of(cls, spec: RevisionSpec) -> QueueLimits:
        return cls(max(spec.queue_depth, 0), spec.timeout_s, spec.container_concurrency)


@dataclass(slots=True, eq=False)
class _Waiter:
    future: asyncio.Future[Backend]
    exclude: Collection[str] = field(default=())
    affinity: int | None = None  # the request's prefix key (activator.balancer)
    adapter: str | None = None  # a LoRA adapter: only replicas that have it loaded will do


class RevisionQueue:
    """One revision's replicas, their in-flight counts, and the requests waiting for them."""

    def __init__(
        self,
        revision: str,
        limits: QueueLimits,
        poke: Poke,
        rng: random.Random,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``wall``: the wall clock a crash loop's ``retry_at`` is compared with."""
        self.revision = revision
        self.limits = limits
        self._poke = poke
        self._rng = rng
        self._wall = wall
        self._backends: list[Backend] = []
        self._waiters: deque[_Waiter] = deque()
        self._failure: str | None = None
        self._failure_poked = False
        self._crash_loop: CrashLoop | None = None
        # LoRA adapters whose load failed (adapter -> reason), as published, and those a
        # request has poked for since (once per publication, as for the revision's failure).
        self._adapter_failures: dict[str, str] = {}
        self._adapter_failures_poked: set[str] = set()
        self._version = -1
        self.in_flight = 0
        self.requests_total = 0
        # Per LoRA adapter: requests held or in flight now, and accepted in all (stats).
        self._adapter_active: dict[str, int] = {}
        self._adapter_totals: dict[str, int] = {}

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def busy_replicas(self) -> tuple[str, ...]:
        """The replicas this activator has requests in flight to."""
        return tuple(b.replica_id for b in self._backends if b.in_flight > 0)

    @property
    def backends(self) -> tuple[Backend, ...]:
        return tuple(self._backends)

    def has_serving(self, adapter: str | None = None) -> bool:
        return any(not b.draining and not b.out for b in self._eligible(adapter))

    def _eligible(self, adapter: str | None) -> Sequence[Backend]:
        """The replicas a request may go to: all, or those with its LoRA adapter loaded."""
        if adapter is None:
            return self._backends
        return [b for b in self._backends if adapter in b.adapters]

    @property
    def adapter_traffic(self) -> tuple[AdapterTraffic, ...]:
        return tuple(
            AdapterTraffic(name, self._adapter_active.get(name, 0), total)
            for name, total in sorted(self._adapter_totals.items())
        )

    def adapter_started(self, adapter: str) -> None:
        """A request for ``adapter`` arrived (pair with ``adapter_finished``)."""
        self._adapter_totals[adapter] = self._adapter_totals.get(adapter, 0) + 1
        self._adapter_active[adapter] = self._adapter_active.get(adapter, 0) + 1

    def adapter_finished(self, adapter: str) -> None:
        self._adapter_active[adapter] = self._adapter_active.get(adapter, 1) - 1

    def take_out(self, backend: Backend, reason: str) -> None:
        """Take ``backend`` out of rotation in this activator (its engine died: ``Backend.out``).

        Requests already on it finish or fail on their own; new ones go elsewhere, or wait (and
        poke the autoscaler) like requests at zero when it was the last one.
        """
        if backend.out:
            return
        backend.out = True
        log.warning(
            "replica %s of %s taken out of rotation: %s", backend.replica_id, self.revision, reason
        )

    def set_endpoints(self, endpoints: RevisionEndpoints) -> None:
        """Replace the replica set (whole sets, idempotent; older versions are ignored)."""
        if endpoints.version and endpoints.version < self._version:
            return
        self._version = endpoints.version
        known = {b.replica_id: b for b in self._backends}
        fresh: list[Backend] = []
        for e in endpoints.endpoints:
            b = known.get(e.replica_id)
            if b is None or b.url != e.url:
                b = Backend(e.replica_id, e.url)
            b.draining = e.draining
            b.adapters = frozenset(e.adapters)
            fresh.append(b)
        # Backends dropped here may still have leases out; those just release into the void.
        self._backends = fresh
        previous, previous_loop = self._failure, self._crash_loop
        serving = self.has_serving()
        self._crash_loop = endpoints.crash_loop if not serving else None
        # A crash loop says more than its ``failure`` (there for activators that predate it).
        self._failure = endpoints.failure if not serving and self._crash_loop is None else None
        self._failure_poked = False
        crash = self.crash_loop_error()
        if crash is not None:
            if self._crash_loop != previous_loop:
                log.warning("%s; last error: %s", crash.message, endpoints.failure)
            self._fail_all(crash)
        elif self._failure is not None:
            if self._failure != previous:
                log.warning("revision %s failed to start: %s", self.revision, self._failure)
            self._fail_all(RevisionFailed(self._failure_message(self._failure)))
        else:
            self._dispatch()
        # An adapter some serving replica lists is served, whatever failed elsewhere.
        self._adapter_failures = {
            f.adapter: f.reason
            for f in endpoints.adapter_failures
            if not self.has_serving(f.adapter)
        }
        self._adapter_failures_poked.clear()
        for adapter, reason in self._adapter_failures.items():
            self._fail_adapter(adapter, AdapterFailed(self._adapter_message(adapter, reason)))

    def close(self, error: Exception) -> None:
        """The revision is gone: answer every waiter with ``error``."""
        self._fail_all(error)

    async def acquire(
        self,
        exclude: Collection[str] = (),
        deadline: float | None = None,
        retry: bool = False,
        affinity: int | None = None,
        adapter: str | None = None,
    ) -> Backend:
        """A backend with a slot reserved for the caller; pair with ``release``.

        ``retry``: the caller already counted this request (a retry, excluding replicas or not).
        Waits until ``deadline`` (event-loop time: the request's whole ``timeoutSeconds``, which
        the wait shares with the answer) or, without one, ``timeout_s`` from now.
        """
        self.requests_total += not (retry or exclude)  # a retry is not a new request
        crash = self.crash_loop_error()
        if crash is not None:
            raise crash  # no poke: the autoscaler would not start before ``retry_at`` anyway
        if self._failure is not None:
            if not self._failure_poked:
                # Once per published failure, so the autoscaler may try the start again.
                self._failure_poked = True
                await self._poke_safely()
            raise RevisionFailed(self._failure_message(self._failure))
        if adapter is not None and adapter in self._adapter_failures:
            if adapter not in self._adapter_failures_poked:
                # Once per published failure: the autoscaler tries the load again on a poke.
                self._adapter_failures_poked.add(adapter)
                await self._poke_safely(adapter)
            reason = self._adapter_failures[adapter]
            raise AdapterFailed(self._adapter_message(adapter, reason))
        if not any(w.adapter == adapter for w in self._waiters):
            backend = pick(
                self._eligible(adapter),
                self.limits.container_concurrency,
                self._rng,
                exclude,
                affinity=affinity,
                now=asyncio.get_running_loop().time(),
            )
            if backend is not None:
                backend.in_flight += 1
                self.in_flight += 1
                return backend
        # Every serving replica refused the connection: it died and the autoscaler has not
        # republished yet. Wait for the replacement like a request at zero (bounded by the
        # timeout), and poke so the autoscaler looks now rather than at its next tick.
        refused_all = bool(exclude) and all(
            b.replica_id in exclude
            for b in self._eligible(adapter)
            if not b.draining and not b.out
        )
        if len(self._waiters) >= self.limits.depth:
            raise QueueFull(
                f"revision {self.revision} has {len(self._waiters)} requests waiting, "
                f"its queue limit; retry later"
            )
        waiter = _Waiter(asyncio.get_running_loop().create_future(), exclude, affinity, adapter)
        first_of_kind = sum(w.adapter == adapter for w in self._waiters) == 0
        self._waiters.append(waiter)
        try:
            if (first_of_kind and not self.has_serving(adapter)) or refused_all:
                # For an adapter no replica has loaded, the poke names it: the autoscaler
                # loads it (starting a replica first if there is none) and republishes.
                await self._poke_safely(adapter)
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.limits.timeout_s
            async with asyncio.timeout_at(deadline):
                return await waiter.future
        except BaseException as exc:
            # Timed out, cancelled (client gone) or failed: a slot handed over in the meantime
            # goes back to the next waiter.
            if waiter.future.done() and not waiter.future.cancelled():
                if waiter.future.exception() is None:
                    self.release(waiter.future.result())
            else:
                waiter.future.cancel()
            if isinstance(exc, TimeoutError):
                raise WaitTimeout(
                    f"revision {self.revision} had no replica ready within "
                    f"{self.limits.timeout_s:g}s"
                ) from None
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _poke_safely(self, adapter: str | None = None) -> None:
        # A poke only speeds a cold start up (the stats tick reports the queue anyway), so a bus
        # that cannot take it must not fail the request that is waiting.
        try:
            if adapter is None:
                await self._poke(self.revision)
            else:
                await self._poke(self.revision, adapter)
        except Exception:
            log.warning("could not poke the autoscaler for %s", self.revision, exc_info=True)

    def release(self, backend: Backend) -> None:
        backend.in_flight -= 1
        self.in_flight -= 1
        if self._waiters:
            self._dispatch()

    def _dispatch(self) -> None:
        if not self._waiters:
            return
        cc = self.limits.container_concurrency
        now = asyncio.get_running_loop().time()
        blocked: set[str | None] = set()  # kinds (base, each adapter) with no room left
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            if waiter.adapter in blocked:
                continue
            backend = pick(
                self._eligible(waiter.adapter),
                cc,
                self._rng,
                waiter.exclude,
                affinity=waiter.affinity,
                now=now,
            )
            if backend is None:
                if not waiter.exclude:
                    blocked.add(waiter.adapter)  # later waiters of its kind cannot do better
                continue
            backend.in_flight += 1
            self.in_flight += 1
            self._waiters.remove(waiter)
            waiter.future.set_result(backend)

    def _fail_all(self, error: Exception) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def _fail_adapter(self, adapter: str, error: Exception) -> None:
        for waiter in [w for w in self._waiters if w.adapter == adapter]:
            self._waiters.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def _adapter_message(self, adapter: str, reason: str) -> str:
        return (
            f"adapter {adapter} of revision {self.revision} failed to load: "
            f"{failure_reason(reason)}"
        )

    def _failure_message(self, failure: str) -> str:
        return f"revision {self.revision} failed to start: {failure_reason(failure)}"

    def crash_loop_error(self) -> ReplicaCrashLoop | None:
        """The answer for this revision's requests while it is in a crash loop and its next try
        is still to come; None otherwise (then a request is held, and starts the next try)."""
        crash = self._crash_loop
        if crash is None:
            return None
        left = crash.retry_at - self._wall()
        if left <= 0:
            return None
        what = "died soon after it became ready" if crash.served else "failed to start"
        at = time.strftime("%H:%M:%S", time.gmtime(crash.retry_at))
        return ReplicaCrashLoop(
            f"revision {self.revision} is in a crash loop: its replica {what} "
            f"{crash.restarts} times in a row (last: {failure_reason(crash.reason)}); "
            f"next try in {math.ceil(left)}s (at {at} UTC)",
            math.ceil(left),
        )


_MAX_REASON_CHARS = 160


def failure_reason(failure: str) -> str:
    """What a caller is told of a failed start: the first line of the runtime's error, bounded.

    The actuators put the short reason first ("exited with code 2", "not ready after 600s",
    Kubernetes' "CrashLoopBackOff: ...") and the runtime's log tail after it; the tail stays with
    the operator.
    """
    first = next((line.strip() for line in failure.splitlines() if line.strip()), "")
    if len(first) > _MAX_REASON_CHARS:
        first = first[: _MAX_REASON_CHARS - 3] + "..."
    return first or "no reason given"
