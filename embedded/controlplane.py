"""The control plane of the embedded platform: apply and delete manifests, persist, publish.

Every change is validated completely before anything is written, written to the state directory
before it is published, and serialised by one lock, so a bad manifest changes nothing. The
platform's replica caps (``torpor.manifest.limits``) are part of that validation: per revision
when the manifest is parsed, in total against every deployed service when it is applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from embedded.state import StateDir
from torpor.bus import Bus
from torpor.manifest import ManifestError, apply_manifest, parse_service
from torpor.manifest.adapter_files import TEMPLATE_ANNOTATIONS, check_adapter_files
from torpor.manifest.limits import ScaleLimits, check_total, clamp_service
from torpor.manifest.lora import check_adapter_names, check_model_owner
from torpor.spec import ServiceSpec

log = logging.getLogger("embedded.controlplane")


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
    def __init__(
        self,
        bus: Bus,
        state: StateDir,
        *,
        domain: str,
        limits: ScaleLimits | None = None,
        local_path: Callable[[str], str] = str,
    ) -> None:
        """``local_path`` maps a path as a pod sees it (``/models/...``) to this machine's, for
        the deploy-time check of LoRA adapter directories."""
        self._local_path = local_path
        self._bus = bus
        self._state = state
        self._domain = domain
        self._limits = limits or ScaleLimits()
        self._lock = asyncio.Lock()
        self._services: dict[str, ServiceSpec] = {}
        # Revisions loaded from the state directory at start (issue 22, fix 2).
        self._restored: frozenset[str] = frozenset()

    async def start(self) -> None:
        """Load what was deployed before a restart (within today's caps) and publish it.

        Restored revisions come back at zero: they are published with initial-scale 0, as
        Knative's scaler ignores initial-scale once a revision was initialized (``scaler.scale``,
        pkg/reconciler/autoscaling/kpa/scaler.go). The loop's memory of initialization dies with
        the process, so without this a restart would cold-start every revision deployed at the
        default initial scale (1). The state directory keeps the manifest's own value: a revision
        a later deploy creates starts at its initial scale."""
        self._services = {}
        for loaded in self._state.load_services():
            service = clamp_service(loaded, self._limits)
            if service != loaded:
                log.warning(
                    "service %s: scale bounds clamped to the cap of %d replicas per revision",
                    service.key,
                    self._limits.per_revision,
                )
            self._services[service.key] = service
        self._restored = frozenset(r.ref.key for s in self._services.values() for r in s.revisions)
        await self._bus.publish_services(self.published())

    def services(self) -> tuple[ServiceSpec, ...]:
        return tuple(self._services[k] for k in sorted(self._services))

    def published(self) -> tuple[ServiceSpec, ...]:
        """What the autoscaler is told: the services, restored revisions at initial-scale 0."""
        return tuple(_restored_at_zero(s, self._restored) for s in self.services())

    async def apply(self, text: str | bytes, *, source: str = "<manifest>") -> Applied:
        # Parsing is bounded but synchronous; keep a large upload off the event loop.
        manifest = await asyncio.to_thread(
            parse_service, text, source=source, max_scale_limit=self._limits.per_revision
        )
        async with self._lock:
            key = f"{manifest.namespace}/{manifest.name}"
            previous = self._services.get(key)
            service = apply_manifest(manifest, previous, domain=self._domain)
            after = {**self._services, key: service}
            try:
                check_total(self._services.values(), after.values(), self._limits)
                # LoRA adapters: no name another model answers to, and usable files.
                check_adapter_names(service, self._services.values(), TEMPLATE_ANNOTATIONS)
                check_model_owner(service, self._services.values())
                lora = service.latest_revision.lora
                if lora is not None:
                    await asyncio.to_thread(check_adapter_files, lora, self._local_path)
            except ManifestError as e:
                raise e.with_source(source) from None
            created = previous is None or len(service.revisions) > len(previous.revisions)
            await self._commit(after)
        await self._bus.publish_services(self.published())
        return Applied(service, service.latest_revision.ref.name, created)

    async def delete(self, namespace: str, name: str) -> ServiceSpec:
        async with self._lock:
            key = f"{namespace}/{name}"
            removed = self._services.get(key)
            if removed is None:
                raise UnknownService(namespace, name)
            await self._commit({k: v for k, v in self._services.items() if k != key})
        await self._bus.publish_services(self.published())
        return removed

    async def _commit(self, services: dict[str, ServiceSpec]) -> None:
        # Off the event loop: with 10,000 services the file is 10 MB and encoding it takes
        # ~0.45 s (benchmarks/control_plane_scale.py), which would hold every poke and request
        # of the platform behind one deploy. The lock still orders the writes.
        ordered = tuple(services[k] for k in sorted(services))
        await asyncio.to_thread(self._state.save_services, ordered)
        self._services = services


def _restored_at_zero(service: ServiceSpec, restored: frozenset[str]) -> ServiceSpec:
    if not any(r.ref.key in restored and r.autoscaling.initial_scale for r in service.revisions):
        return service
    revisions = tuple(
        replace(r, autoscaling=replace(r.autoscaling, initial_scale=0))
        if r.ref.key in restored
        else r
        for r in service.revisions
    )
    return replace(service, revisions=revisions)
