"""Leader election on a ``coordination.k8s.io/v1`` Lease, so two autoscaler replicas never both act.

The rule is client-go's (``tools/leaderelection``): a Lease held by someone else counts as expired
only when its record has not *changed* for ``leaseDurationSeconds`` as measured on our own clock
(the holder's ``renewTime`` is another machine's clock, so it is never compared with ours). A
leader that fails to renew within ``renew_deadline_s`` steps down on its own, before anyone else
may take over, and whoever sees the Lease held by another identity stops acting at once.

Timings that cannot overlap (issue 22, fix 5): client-go bounds a leader's renewal by the renew
deadline (``renew`` in ``tools/leaderelection/leaderelection.go`` runs the attempts under
``context.WithTimeout(ctx, RenewDeadline)``). Here every Lease call of a leader is bounded by
what is left of its renew deadline, and the step-down is judged on a timestamp taken *after*
the call failed or timed out, so a hung call can no longer keep a leader acting past its
deadline (it could before: a 30 s API timeout, judged on the time taken before the call, against
a 15 s Lease). Every other API call is bounded by ``call_timeout_s`` (the Lease duration minus the
renew deadline, 5 s by default: ``knative.kube.Kube(request_timeout_s=...)``), so a write begun
while leading lands, or is given up, before another replica can hold the Lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from knative.errors import ALREADY_EXISTS, CONFLICT, NOT_FOUND, KubeError

log = logging.getLogger(__name__)
Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    namespace: str = "torpor-system"
    name: str = "torpor-autoscaler"
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    @property
    def call_timeout_s(self) -> float:
        """The longest any API call may take: a write checked against leadership when it began
        ends before the Lease can pass to another replica."""
        return max(0.5, self.lease_duration_s - self.renew_deadline_s)


class Action(StrEnum):
    WAIT = "wait"  # someone else holds a live lease
    ACQUIRE = "acquire"  # free or expired: write ourselves in
    RENEW = "renew"  # ours: bump renewTime


@dataclass(frozen=True, slots=True)
class Observed:
    """The last Lease record seen and when (our clock) it last changed."""

    record: tuple[str, str, int]  # (holderIdentity, renewTime, leaseTransitions)
    changed_at: float


def decide(identity: str, spec: Json | None, observed: Observed | None, now: float) -> Action:
    """What to do with the Lease whose ``spec`` was just read (None: it does not exist)."""
    if spec is None:
        return Action.ACQUIRE
    holder = spec.get("holderIdentity") or ""
    if holder == identity:
        return Action.RENEW
    if not holder:
        return Action.ACQUIRE
    duration = float(spec.get("leaseDurationSeconds") or 15)
    if observed is None or now - observed.changed_at < duration:
        return Action.WAIT
    return Action.ACQUIRE


def observe(spec: Json | None, previous: Observed | None, now: float) -> Observed | None:
    if spec is None:
        return None
    record = (
        str(spec.get("holderIdentity") or ""),
        str(spec.get("renewTime") or ""),
        int(spec.get("leaseTransitions") or 0),
    )
    if previous is not None and previous.record == record:
        return previous
    return Observed(record, now)


def micro_time(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseApi(Protocol):
    async def read_lease(self, namespace: str, name: str) -> Json: ...

    async def create_lease(self, namespace: str, body: Json) -> Json: ...

    async def replace_lease(self, namespace: str, name: str, body: Json) -> Json: ...


class LeaderElector:
    """Keeps ``is_leader`` true only while this identity holds the Lease.

    ``on_change(is_leader)`` runs on every transition; losing leadership is reported before the
    next attempt to act can be made, so the controller stops writing at once.
    """

    def __init__(
        self,
        api: LeaseApi,
        identity: str,
        config: LeaseConfig = LeaseConfig(),
        *,
        clock: Callable[[], float],
        on_change: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self._api = api
        self._identity = identity
        self._config = config
        self._clock = clock
        self._on_change = on_change
        self._observed: Observed | None = None
        self._last_renewed = 0.0
        self.is_leader = False
        self.changed = asyncio.Event()

    async def run(self) -> None:
        try:
            while True:
                await self.step()
                await asyncio.sleep(self._config.retry_period_s)
        finally:
            await self._set(False)

    async def step(self) -> None:
        """One read-decide-write round."""
        cfg = self._config
        now = self._clock()
        try:
            lease: Json | None = await self._bounded(self._api.read_lease(cfg.namespace, cfg.name))
        except KubeError as exc:
            if exc.status != NOT_FOUND:
                log.warning("reading lease %s/%s failed: %s", cfg.namespace, cfg.name, exc)
                await self._check_deadline(self._clock())  # judged after the call
                return
            lease = None
        spec = (lease.get("spec") or {}) if lease is not None else None
        self._observed = observe(spec, self._observed, now)
        action = decide(self._identity, spec, self._observed, now)
        if action is Action.WAIT:
            if self.is_leader:
                log.warning(
                    "lease %s/%s is held by %s: stepping down",
                    cfg.namespace,
                    cfg.name,
                    (spec or {}).get("holderIdentity"),
                )
            await self._set(False)
            return
        body = self._body(lease, spec, action, now)
        try:
            if lease is None:
                await self._bounded(self._api.create_lease(cfg.namespace, body))
            else:
                await self._bounded(self._api.replace_lease(cfg.namespace, cfg.name, body))
        except KubeError as exc:
            if exc.status in (CONFLICT, ALREADY_EXISTS):
                # Someone else wrote first; the next read says who holds it.
                await self._set(False)
            else:
                log.warning("writing lease %s/%s failed: %s", cfg.namespace, cfg.name, exc)
                await self._check_deadline(self._clock())  # judged after the call
            return
        # renewTime says ``now`` (taken before the read): counting from it is conservative.
        self._last_renewed = now
        await self._set(True)

    async def _bounded(self, call: Awaitable[Json]) -> Json:
        """One Lease call, bounded: a leader's by what is left of its renew deadline (client-go's
        ``renew``), anyone else's by ``call_timeout_s``. A timeout is a failed call."""
        if self.is_leader:
            budget = self._config.renew_deadline_s - (self._clock() - self._last_renewed)
        else:
            budget = self._config.call_timeout_s
        try:
            async with asyncio.timeout(max(0.0, budget)):
                return await call
        except TimeoutError:
            raise KubeError(0, "Timeout", f"no answer within {max(0.0, budget):.1f} s") from None

    def _body(self, lease: Json | None, spec: Json | None, action: Action, now: float) -> Json:
        cfg = self._config
        old = spec or {}
        transitions = int(old.get("leaseTransitions") or 0)
        acquire_time = old.get("acquireTime") or micro_time(now)
        if action is Action.ACQUIRE:
            transitions += 1 if old.get("holderIdentity") else 0
            acquire_time = micro_time(now)
        metadata: Json = {"name": cfg.name, "namespace": cfg.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self._identity,
                "leaseDurationSeconds": int(cfg.lease_duration_s),
                "acquireTime": acquire_time,
                "renewTime": micro_time(now),
                "leaseTransitions": transitions,
            },
        }

    async def _check_deadline(self, now: float) -> None:
        if self.is_leader and now - self._last_renewed > self._config.renew_deadline_s:
            log.warning(
                "could not renew the lease within %.0f s: stepping down",
                self._config.renew_deadline_s,
            )
            await self._set(False)

    async def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        self.changed.set()
        self.changed = asyncio.Event()
        log.info("leadership %s (identity %s)", "acquired" if leader else "lost", self._identity)
        if self._on_change is not None:
            await self._on_change(leader)
