"""List-then-watch caches of Kubernetes objects (client-go's reflector, in small).

A reflector lists once, then watches from the list's resourceVersion, moving that version forward
with every event (bookmarks included), so a stream that ends is resumed where it stopped. A 410
Gone — as an HTTP status or as an ERROR event inside the stream — means the version is too old:
relist. Any other failure backs off exponentially up to a cap before trying again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from autoscaler.actuators.knative_errors import GONE, KubeError, WatchExpired

log = logging.getLogger(__name__)
Json = dict[str, Any]
ObjectKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 0.2
    cap_s: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1, 2, ...)."""
        return float(min(self.cap_s, self.base_s * 2 ** max(0, failures - 1)))


class WatchApi(Protocol):
    async def list(self, resource: Any, *, label_selector: str | None = None) -> Json: ...

    def watch(
        self, resource: Any, resource_version: str, *, label_selector: str | None = None
    ) -> AsyncGenerator[Json, None]: ...


def key_of(obj: Json) -> ObjectKey:
    meta = obj["metadata"]
    return (str(meta.get("namespace", "")), str(meta["name"]))


class Reflector:
    """Keeps ``objects`` equal to the server's view of one resource kind."""

    def __init__(
        self,
        api: WatchApi,
        resource: Any,
        *,
        on_change: Callable[[], None],
        label_selector: str | None = None,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._api = api
        self.resource = resource
        self._selector = label_selector
        self._on_change = on_change
        self._backoff = backoff
        self.objects: dict[ObjectKey, Json] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self.relists = 0

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if self.resource_version is None:
                    await self._relist()
                assert self.resource_version is not None
                stream = self._api.watch(
                    self.resource, self.resource_version, label_selector=self._selector
                )
                # Closed at once on any exit, so its reading thread ends before we relist.
                async with contextlib.aclosing(stream):
                    async for event in stream:
                        self._apply(event)
                        failures = 0
                failures = 0  # the server ended the stream (timeoutSeconds): resume at once
            except WatchExpired:
                log.info(
                    "%s: resourceVersion %s expired, relisting",
                    self.resource,
                    self.resource_version,
                )
                self.resource_version = None
            except KubeError as exc:
                if exc.status == GONE:
                    self.resource_version = None
                    continue
                failures += 1
                log.warning("%s: %s", self.resource, exc)
                await asyncio.sleep(self._backoff.delay(failures))
            except Exception as exc:  # the connection failed mid-stream
                failures += 1
                log.warning("%s: watch failed: %r", self.resource, exc)
                await asyncio.sleep(self._backoff.delay(failures))

    async def _relist(self) -> None:
        listing = await self._api.list(self.resource, label_selector=self._selector)
        self.objects = {key_of(o): o for o in listing.get("items") or ()}
        self.resource_version = str(listing["metadata"]["resourceVersion"])
        self.relists += 1
        self.synced.set()
        self._on_change()

    def _apply(self, event: Json) -> None:
        kind = event.get("type")
        obj: Json = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == GONE:
                raise WatchExpired(obj.get("message", ""))
            raise KubeError(
                int(obj.get("code") or 0), str(obj.get("reason", "")), str(obj.get("message", ""))
            )
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self.objects.pop(key_of(obj), None)
        else:
            self.objects[key_of(obj)] = obj
        self._on_change()

    def put_local(self, obj: Json) -> None:
        """Record our own write before its watch event arrives (the event overwrites it)."""
        self.objects[key_of(obj)] = obj
