"""The bus contract: message types and the ``Bus`` protocol both implementations satisfy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from torpor.spec import ServiceSpec


@dataclass(frozen=True, slots=True)
class AdapterTraffic:
    """One LoRA adapter's requests at one activator (``ActivatorStats.adapters``)."""

    name: str
    active: int  # held or in flight now
    requests_total: int  # accepted since the activator started: a change is a use


@dataclass(frozen=True, slots=True)
class ActivatorStats:
    """One activator's view of one revision, sent at least every second."""

    activator_id: str
    revision: str  # RevisionRef.key
    queued: int  # requests held waiting for a replica with room
    in_flight: int  # requests forwarded and not yet finished
    at: float  # wall-clock seconds (time.time()) when measured
    # Monotonically increasing count of requests accepted. No program decides on it; it is how
    # tests (tests/activator/test_app.py, tests/integration/test_several_activators.py) count
    # from the outside which activator served what.
    requests_total: int = 0
    # Replicas this activator has requests in flight to, when measured. A draining replica is
    # stopped only once no fresh report lists it (``autoscaler.loop``): vLLM's own gauges miss
    # a request still on its way in.
    busy: tuple[str, ...] = ()
    # Per LoRA adapter of the revision (issue 16): how the autoscaler knows an adapter's last
    # use, to unload it after its idle window. Counted in ``queued``/``in_flight`` too.
    adapters: tuple[AdapterTraffic, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A replica's address as the activators see it."""

    replica_id: str
    url: str  # base URL, e.g. http://127.0.0.1:40123
    draining: bool = False
    # LoRA adapters loaded on this replica (the autoscaler places them): a request for an
    # adapter goes only to a replica listing it, and waits while none does.
    adapters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdapterFailure:
    """A LoRA adapter whose last load failed, and the replica's answer."""

    adapter: str
    reason: str


@dataclass(frozen=True, slots=True)
class CrashLoop:
    """The revision's replicas keep dying before or soon after they become ready, and the
    autoscaler waits before starting the next one (the kubelet's CrashLoopBackOff; see
    ``autoscaler.crashloop``). Until ``retry_at`` the activators answer the revision's requests
    at once with ``503 replica_crash_loop``; after it, a request is held and starts the next try.
    """

    restarts: int  # deaths in a row that counted; the next start is restart number ``restarts``
    retry_at: float  # wall-clock seconds (time.time()): no start before this
    # What a caller may be told of the last death: the actuator's short reason ("exited with
    # code 1") and the exception's class; the log line itself is the operator's.
    reason: str
    backoff_s: float = 0.0  # the wait the last death set
    served: bool = False  # the last one died after it became ready (else it failed to start)


@dataclass(frozen=True, slots=True)
class RevisionEndpoints:
    """Every replica the activators may send a revision's requests to, replacing the last set.

    ``failure`` carries the runtime's own error when the revision cannot start, so requests held
    at zero get an answer that says why instead of waiting for their timeout.
    ``adapter_failures`` does the same for requests held for a LoRA adapter whose load failed.
    ``crash_loop`` says that the revision is in a crash loop and until when (``failure`` then
    carries the last death's error, for activators that predate ``crash_loop``).
    """

    revision: str  # RevisionRef.key
    endpoints: tuple[Endpoint, ...] = ()
    failure: str | None = None
    version: int = 0  # increases with every publish for this revision
    adapter_failures: tuple[AdapterFailure, ...] = ()
    crash_loop: CrashLoop | None = None

    @property
    def serving(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if not e.draining)


@dataclass(frozen=True, slots=True)
class ServicesChanged:
    services: tuple[ServiceSpec, ...]


@dataclass(frozen=True, slots=True)
class EndpointsChanged:
    endpoints: RevisionEndpoints


@dataclass(frozen=True, slots=True)
class Poked:
    revision: str  # RevisionRef.key
    adapter: str | None = None  # a request waits for this LoRA adapter to be loaded


BusEvent = ServicesChanged | EndpointsChanged | Poked


@dataclass(frozen=True, slots=True)
class BusSnapshot:
    services: tuple[ServiceSpec, ...]
    endpoints: dict[str, RevisionEndpoints]
    stats: tuple[ActivatorStats, ...]


class BusUnavailable(Exception):
    """The bus could not be reached within its bounded retry; the caller decides what to do
    (an activator keeps serving from what it last saw, a publisher tries again next tick)."""


class Bus(Protocol):
    """What every component needs from the bus. Implementations must be safe to share in a loop.

    ``events()`` yields changes published after it was called; a subscriber first takes a
    ``snapshot()`` and then applies events, which are idempotent (whole sets, not deltas). After a
    reconnect an implementation emits a fresh ``ServicesChanged`` and ``EndpointsChanged`` for
    everything, so a subscriber that missed events converges. Publishing or reading while the
    bus is unreachable raises ``BusUnavailable`` after a bounded retry.
    """

    async def publish_services(self, services: Sequence[ServiceSpec]) -> None: ...

    async def publish_endpoints(self, endpoints: RevisionEndpoints) -> None: ...

    async def publish_stats(self, stats: Sequence[ActivatorStats]) -> None: ...

    async def poke(self, revision: str, adapter: str | None = None) -> None: ...

    async def snapshot(self) -> BusSnapshot: ...

    async def revision_stats(self, revision: str) -> tuple[ActivatorStats, ...]:
        """The live stats of one revision, one per activator that reports on it.

        The autoscaler's per-tick read: it costs what that revision's activators sent, not the
        whole bus (every spec, endpoint set and stat), which ``snapshot()`` decodes."""
        ...

    def events(self) -> AsyncIterator[BusEvent]: ...

    async def aclose(self) -> None: ...
