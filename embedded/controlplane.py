"""The control plane of the embedded platform: apply and delete manifests, persist, publish.

Every change is validated completely before anything is written, written to the state directory
before it is published, and serialised by one lock, so a bad manifest changes nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from embedded.state import StateDir
from torpor.bus import Bus
from torpor.manifest import apply_manifest, parse_service
from torpor.spec import ServiceSpec


@dataclass(frozen=True, slots=True)
class Applied:
    service: ServiceSpec
    latest_revision: str
    created_revision: bool


class UnknownService(LookupError):
    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"service {namespace}/{name} is not deployed")
        self.namespace = namespace
        self.name = name


class ControlPlane:
    def __init__(self, bus: Bus, state: StateDir, *, domain: str) -> None:
        self._bus = bus
        self._state = state
        self._domain = domain
        self._lock = asyncio.Lock()
        self._services: dict[str, ServiceSpec] = {}

    async def start(self) -> None:
        """Load what was deployed before a restart and publish it."""
        self._services = {s.key: s for s in self._state.load_services()}
        await self._bus.publish_services(self.services())

    def services(self) -> tuple[ServiceSpec, ...]:
        return tuple(self._services[k] for k in sorted(self._services))

    async def apply(self, text: str | bytes, *, source: str = "<manifest>") -> Applied:
        # Parsing is bounded but synchronous; keep a large upload off the event loop.
        manifest = await asyncio.to_thread(parse_service, text, source=source)
        async with self._lock:
            key = f"{manifest.namespace}/{manifest.name}"
            previous = self._services.get(key)
            service = apply_manifest(manifest, previous, domain=self._domain)
            created = previous is None or len(service.revisions) > len(previous.revisions)
            self._commit({**self._services, key: service})
        await self._bus.publish_services(self.services())
        return Applied(service, service.latest_revision.ref.name, created)

    async def delete(self, namespace: str, name: str) -> ServiceSpec:
        async with self._lock:
            key = f"{namespace}/{name}"
            removed = self._services.get(key)
            if removed is None:
                raise UnknownService(namespace, name)
            self._commit({k: v for k, v in self._services.items() if k != key})
        await self._bus.publish_services(self.services())
        return removed

    def _commit(self, services: dict[str, ServiceSpec]) -> None:
        self._state.save_services(tuple(services[k] for k in sorted(services)))
        self._services = services
