"""The bus: how activators, the autoscaler and the control plane talk.

Four things travel on it: revision specs (control plane -> all), per-revision stats (activator ->
autoscaler), pokes (activator -> autoscaler) and ready endpoints with draining flags (autoscaler ->
activators). ``Bus`` is the one interface; ``MemoryBus`` serves the embedded platform and
``RedisBus`` several activators.
"""

from torpor.bus.base import (
    ActivatorStats,
    AdapterFailure,
    AdapterTraffic,
    Bus,
    BusEvent,
    BusSnapshot,
    BusUnavailable,
    CrashLoop,
    Endpoint,
    EndpointsChanged,
    Poked,
    RevisionEndpoints,
    ServicesChanged,
)
from torpor.bus.memory import MemoryBus
from torpor.bus.redis import RedisBus

__all__ = [
    "ActivatorStats",
    "AdapterFailure",
    "AdapterTraffic",
    "Bus",
    "BusEvent",
    "BusSnapshot",
    "BusUnavailable",
    "CrashLoop",
    "Endpoint",
    "EndpointsChanged",
    "MemoryBus",
    "Poked",
    "RedisBus",
    "RevisionEndpoints",
    "ServicesChanged",
]
