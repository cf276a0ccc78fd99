"""List-then-watch caches of Kubernetes objects (client-go's reflector, in small).

A reflector lists once, then watches from the list's resourceVersion, moving that version forward
with every event (bookmarks included), so a stream that ends is resumed where it stopped. A 410
Gone — as an HTTP status or as an ERROR event inside the stream — means the version is too old:
relist. Any other failure backs off exponentially up to a cap before trying again.

``on_change(obj)`` is told which object changed (``None`` after a relist: anything may have), so
a controller reconciles what changed rather than everything on every event. With
``index_label`` the cache also keeps its objects grouped by that label's value per namespace
(``labelled``): with 10,000 revisions, finding one revision's pods by scanning every pod made
each reconcile of one revision cost the whole cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from knative.errors import GONE, KubeError, WatchExpired

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
        on_change: Callable[[Json | None], None],
        label_selector: str | None = None,
        backoff: Backoff = Backoff(),
        index_label: str | None = None,
    ) -> None:
        self._api = api
        self.resource = resource
        self._selector = label_selector
        self._on_change = on_change
        self._backoff = backoff
        self.objects: dict[ObjectKey, Json] = {}
        self._index_label = index_label
        self._index: dict[ObjectKey, dict[ObjectKey, Json]] = {}  # (namespace, value) -> objects
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
        self.objects = {}
        self._index = {}
        for o in listing.get("items") or ():
            self._put(o)
        self.resource_version = str(listing["metadata"]["resourceVersion"])
        self.relists += 1
        self.synced.set()
        self._on_change(None)

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
            self._remove(key_of(obj))
        else:
            self._put(obj)
        self._on_change(obj)

    def put_local(self, obj: Json) -> None:
        """Record our own write before its watch event arrives (the event overwrites it)."""
        self._put(obj)

    def labelled(self, namespace: str, value: str) -> list[Json]:
        """The objects in ``namespace`` whose ``index_label`` is ``value``."""
        return list(self._index.get((namespace, value), {}).values())

    def _index_key(self, obj: Json) -> ObjectKey | None:
        if self._index_label is None:
            return None
        meta = obj["metadata"]
        value = (meta.get("labels") or {}).get(self._index_label)
        return None if value is None else (str(meta.get("namespace", "")), str(value))

    def _put(self, obj: Json) -> None:
        key = key_of(obj)
        self._remove(key)
        self.objects[key] = obj
        index = self._index_key(obj)
        if index is not None:
            self._index.setdefault(index, {})[key] = obj

    def _remove(self, key: ObjectKey) -> None:
        old = self.objects.pop(key, None)
        index = None if old is None else self._index_key(old)
        if index is None:
            return
        bucket = self._index.get(index)
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:
                del self._index[index]
