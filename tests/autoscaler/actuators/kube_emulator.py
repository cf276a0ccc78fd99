"""A small Kubernetes API server emulator speaking the real wire format, for controller tests.

Why not ``kmock``: its emulator (0.8) stores objects but answers every write without
resourceVersion preconditions and serves watches without resume or 410 Gone, which are exactly the
behaviours these tests must exercise. This one keeps, per resource kind, an event log keyed by a
global resourceVersion, so:

- lists carry ``metadata.resourceVersion``; watches replay events after the version asked for and
  then stream live ones, as newline-delimited JSON;
- ``compact()`` forgets history, so a watch from an older version gets an ERROR event with a
  ``Status`` of code 410 (reason ``Expired``), as the real server sends;
- PUT and PATCH with a stale ``metadata.resourceVersion`` answer 409 Conflict;
- ``/status`` and ``/scale`` subresources behave as on a real server (status writes touch only
  status; a Deployment's scale maps to ``spec.replicas``).

It is not a full server: label selectors support ``key``, ``key=value`` and commas only, and
merge patches follow RFC 7386 (strategic merge is treated the same way).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

Json = dict[str, Any]
Key = tuple[str, str, str, str]  # (api prefix "api/v1" | "apis/g/v", plural, namespace, name)
WriteHook = Callable[[str, Key, str | None], None]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> Json:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = _merge(result.get(k), v)
    return result


def _selects(selector: str | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, eq, value = term.partition("=")
        if eq:
            if labels.get(key) != value:
                return False
        elif key not in labels:
            return False
    return True


@dataclass(eq=False)
class _Watcher:
    prefix: str
    plural: str
    selector: str | None
    queue: asyncio.Queue[Json | None] = field(default_factory=asyncio.Queue)


class KubeEmulator:
    def __init__(self) -> None:
        self.objects: dict[Key, Json] = {}
        self._rv = itertools.count(100)
        self._current_rv = 99
        self._log: list[tuple[int, str, str, Json]] = []  # (rv, prefix/plural, type, object)
        self._compacted_below = 0
        self._watchers: set[_Watcher] = set()
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.before_write: WriteHook | None = None
        self.watch_starts: list[tuple[str, str]] = []  # (plural, resourceVersion) per watch
        self.gone_sent: list[str] = []  # plural of every watch answered with 410 Gone
        self._failures: dict[str, list[int]] = {}  # path part -> statuses still to answer
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self.break_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- test controls ---------------------------------------------------------------------------

    def compact(self) -> None:
        """Forget history: a watch from any version older than now gets 410 Gone."""
        self._compacted_below = self._current_rv + 1
        self._log.clear()

    def break_watches(self) -> None:
        """End every open watch stream, as an API server restart would."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)

    def put(self, prefix: str, plural: str, obj: Json) -> Json:
        """Create or replace an object directly (what another controller would do)."""
        meta = obj.setdefault("metadata", {})
        key = (prefix, plural, meta.get("namespace", ""), meta["name"])
        old = self.objects.get(key)
        if old is None:
            self._stamp_new(obj)
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            meta["generation"] = old["metadata"].get("generation", 1)
        return self._store(key, obj, "MODIFIED" if old else "ADDED")

    def delete(self, prefix: str, plural: str, namespace: str, name: str) -> None:
        key = (prefix, plural, namespace, name)
        obj = self.objects.pop(key)
        rv = self._next_rv()
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(rv)
        self._record(rv, key, "DELETED", obj)

    def get(self, prefix: str, plural: str, namespace: str, name: str) -> Json | None:
        return self.objects.get((prefix, plural, namespace, name))

    def fail_next(self, path_part: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests whose path contains ``path_part`` with ``status``."""
        self._failures.setdefault(path_part, []).extend([status] * times)

    def writes(self, path_part: str) -> list[tuple[str, str]]:
        return [
            (m, p) for m, p in self.requests if m in {"POST", "PUT", "PATCH"} and path_part in p
        ]

    # -- storage ---------------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self._current_rv = next(self._rv)
        return self._current_rv

    def _stamp_new(self, obj: Json) -> None:
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta.setdefault("generation", 1)

    def _store(self, key: Key, obj: Json, event: str) -> Json:
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        self.objects[key] = obj
        self._record(rv, key, event, obj)
        return obj

    def _record(self, rv: int, key: Key, event: str, obj: Json) -> None:
        kind = f"{key[0]}/{key[1]}"
        self._log.append((rv, kind, event, copy.deepcopy(obj)))
        for watcher in self._watchers:
            if f"{watcher.prefix}/{watcher.plural}" == kind and _selects(
                watcher.selector, obj["metadata"].get("labels", {})
            ):
                watcher.queue.put_nowait({"type": event, "object": copy.deepcopy(obj)})

    # -- HTTP ------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        for part, statuses in self._failures.items():
            if part in request.path and statuses:
                code = statuses.pop(0)
                return web.json_response(_status(code, "InternalError", "injected"), status=code)
        parts = [p for p in request.path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            prefix, rest = "api/v1", parts[2:]
        elif parts and parts[0] == "apis" and len(parts) >= 3:
            prefix, rest = "/".join(parts[:3]), parts[3:]
        else:
            return web.json_response(_status(404, "NotFound", "no such path"), status=404)
        namespace = ""
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            return web.json_response(_status(404, "NotFound", "no resource"), status=404)
        plural, name, sub = (
            rest[0],
            (rest[1] if len(rest) > 1 else None),
            (rest[2] if len(rest) > 2 else None),
        )
        if name is None:
            if request.method == "GET":
                if request.query.get("watch") in {"true", "1"}:
                    return await self._watch(request, prefix, plural, namespace)
                return self._list(request, prefix, plural, namespace)
            if request.method == "POST":
                return self._create(await request.json(), prefix, plural, namespace)
            return web.json_response(_status(405, "MethodNotAllowed", ""), status=405)
        key = (prefix, plural, namespace, name)
        if request.method == "GET":
            obj = self.objects.get(key)
            if obj is None:
                return self._not_found(plural, name)
            return web.json_response(self._scale_of(obj) if sub == "scale" else obj)
        if request.method in {"PUT", "PATCH"}:
            if self.before_write is not None:
                self.before_write(request.method, key, sub)
            return self._write(request.method, key, sub, await request.json())
        if request.method == "DELETE":
            if key not in self.objects:
                return self._not_found(plural, name)
            self.delete(*key)
            return web.json_response(_status(200, "", "deleted") | {"status": "Success"})
        return web.json_response(_status(405, "MethodNotAllowed", ""), status=405)

    def _not_found(self, plural: str, name: str) -> web.Response:
        return web.json_response(
            _status(404, "NotFound", f'{plural} "{name}" not found'), status=404
        )

    def _list(self, request: web.Request, prefix: str, plural: str, namespace: str) -> web.Response:
        selector = request.query.get("labelSelector")
        items = [
            obj
            for (p, pl, ns, _), obj in sorted(self.objects.items())
            if p == prefix
            and pl == plural
            and (not namespace or ns == namespace)
            and _selects(selector, obj["metadata"].get("labels", {}))
        ]
        return web.json_response(
            {
                "kind": "List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._current_rv)},
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, prefix: str, plural: str, namespace: str
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self._current_rv)
        self.watch_starts.append((plural, str(since)))
        response = web.StreamResponse()
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(event: Json) -> None:
            await response.write(json.dumps(event).encode() + b"\n")

        if since + 1 < self._compacted_below:
            message = f"too old resource version: {since} ({self._compacted_below})"
            self.gone_sent.append(plural)
            await send({"type": "ERROR", "object": _status(410, "Expired", message)})
            return response
        watcher = _Watcher(prefix, plural, request.query.get("labelSelector"))
        kind = f"{prefix}/{plural}"
        for rv, k, event, obj in list(self._log):
            if (
                k == kind
                and rv > since
                and _selects(watcher.selector, obj["metadata"].get("labels", {}))
            ):
                watcher.queue.put_nowait({"type": event, "object": copy.deepcopy(obj)})
        self._watchers.add(watcher)
        timeout = float(request.query.get("timeoutSeconds") or 300)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await watcher.queue.get()
                    if event is None:
                        break
                    await send(event)
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            self._watchers.discard(watcher)
        return response

    def _create(self, body: Json, prefix: str, plural: str, namespace: str) -> web.Response:
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
        key = (prefix, plural, namespace, meta["name"])
        if key in self.objects:
            return web.json_response(
                _status(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists'),
                status=409,
            )
        self._stamp_new(body)
        meta.pop("resourceVersion", None)
        return web.json_response(self._store(key, body, "ADDED"), status=201)

    def _conflict(self, plural: str, name: str) -> web.Response:
        message = (
            f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )
        return web.json_response(_status(409, "Conflict", message), status=409)

    def _write(self, method: str, key: Key, sub: str | None, body: Json) -> web.Response:
        current = self.objects.get(key)
        if current is None:
            return self._not_found(key[1], key[3])
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
            return self._conflict(key[1], key[3])
        new = copy.deepcopy(current)
        if sub == "scale":
            replicas = _merge(self._scale_of(current), body)["spec"]["replicas"]
            new.setdefault("spec", {})["replicas"] = replicas
        elif sub == "status":
            merged = _merge(current, body) if method == "PATCH" else body
            new["status"] = copy.deepcopy(merged.get("status", {}))
        else:
            merged = _merge(current, body) if method == "PATCH" else copy.deepcopy(body)
            merged["status"] = new.get("status", {})  # status only changes through /status
            keep = ("uid", "creationTimestamp", "generation", "namespace", "name")
            merged.setdefault("metadata", {}).update({k: current["metadata"][k] for k in keep})
            new = merged
        if new.get("spec") != current.get("spec"):
            new["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        if new == current:
            return web.json_response(self._scale_of(current) if sub == "scale" else current)
        stored = self._store(key, new, "MODIFIED")
        return web.json_response(self._scale_of(stored) if sub == "scale" else stored)

    def _scale_of(self, obj: Json) -> Json:
        meta = obj["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta["name"],
                "namespace": meta.get("namespace", ""),
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
                "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
            "status": {"replicas": obj.get("status", {}).get("replicas", 0)},
        }
