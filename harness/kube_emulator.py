"""A test harness imitating a Kubernetes API server (and, opt-in, its ReplicaSet and endpoints
controllers) over the real wire format, for the Knative controller's tests. It is not a cluster
and ships with nothing: it exists so the controller meets, over real HTTP through the official
client, the behaviours of a real cluster that would otherwise only show up on one.

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
  status; a Deployment's scale maps to ``spec.replicas``);
- a watch sees only its namespace (``/namespaces/{ns}/...``) and only objects its label selector
  matches, and an object that stops matching is sent as DELETED (the old object at the new
  resourceVersion), one that starts matching as ADDED, as the API server's watch cache does;
- ``gone_as_http``: a watch from a compacted version is answered HTTP 410 before any stream
  (the other form a real server uses) instead of a 200 stream with an ERROR event;
- ``bookmark()`` sends BOOKMARK events (only a resourceVersion) to watches that allowed them;
- deleting a pod makes it terminating: ``deletionTimestamp`` set, still listed and watched,
  until ``finish_terminating()`` removes it (the kubelet's grace period, under test control);
- ``replicasets = True`` runs a ReplicaSet controller for every Deployment: it creates pending,
  unscheduled pods up to ``spec.replicas`` and, scaling down, terminates pods in the ReplicaSet's
  own order (unscheduled, then Pending < Unknown < Running, then unready, then the lower
  ``pod-deletion-cost``, then the newer); ``pod_ready()`` plays the scheduler, kubelet and
  endpoints controller for one pod (Running, Ready, listed in the private service's slice).

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


def _now_precise() -> str:
    # Pods this emulator creates within one second still sort by age (a real server keeps whole
    # seconds, and its ReplicaSet then falls back to criteria not modelled here).
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
REVISION_LABEL = "serving.knative.dev/revision"
_PHASES = {"Pending": 0, "Unknown": 1, "Running": 2}


def _pod_ready(pod: Json) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def replicaset_victim_order(pod: Json) -> tuple[int, int, int, int, float]:
    """``controller.ActivePodsWithRanks.Less`` (kubernetes pkg/controller/controller_utils.go),
    criteria 1-4 and 8: written here from the Kubernetes source, apart from the controller's own
    prediction in knative/victim.py, so the two can disagree."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    try:
        cost = int((meta.get("annotations") or {}).get(DELETION_COST, 0))
    except ValueError:
        cost = 0
    created = meta.get("creationTimestamp")
    # No creation time first, then newer before older.
    age = (
        -datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp()
        if created
        else float("-inf")
    )
    return (
        1 if spec.get("nodeName") else 0,
        _PHASES.get(str(status.get("phase") or "Pending"), 0),
        1 if _pod_ready(pod) else 0,
        cost,
        age,
    )


@dataclass(eq=False)
class _Watcher:
    prefix: str
    plural: str
    namespace: str  # "" for a watch over all namespaces
    selector: str | None
    bookmarks: bool = False
    queue: asyncio.Queue[Json | None] = field(default_factory=asyncio.Queue)

    def event(self, kind: str, event: str, obj: Json, prev: Json | None) -> Json | None:
        """What this watch is sent for one change, or None (the watch cache's rules)."""
        if kind != f"{self.prefix}/{self.plural}":
            return None
        if self.namespace and obj["metadata"].get("namespace", "") != self.namespace:
            return None
        now = _selects(self.selector, obj["metadata"].get("labels") or {})
        before = prev is not None and _selects(self.selector, prev["metadata"].get("labels") or {})
        if event == "DELETED":
            return {"type": event, "object": copy.deepcopy(obj)} if now else None
        if now and (before or event == "ADDED"):
            return {"type": event, "object": copy.deepcopy(obj)}
        if now:
            return {"type": "ADDED", "object": copy.deepcopy(obj)}
        if before:
            assert prev is not None
            old = copy.deepcopy(prev)
            old["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
            return {"type": "DELETED", "object": old}
        return None


class KubeEmulator:
    def __init__(self) -> None:
        self.objects: dict[Key, Json] = {}
        self._rv = itertools.count(100)
        self._current_rv = 99
        # (rv, prefix/plural, type, object, the object before this change)
        self._log: list[tuple[int, str, str, Json, Json | None]] = []
        self._compacted_below = 0
        self._watchers: set[_Watcher] = set()
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.before_write: WriteHook | None = None
        self.watch_starts: list[tuple[str, str]] = []  # (plural, resourceVersion) per watch
        self.gone_sent: list[str] = []  # plural of every watch answered with 410 Gone
        self._failures: dict[str, list[int]] = {}  # path part -> statuses still to answer
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.gone_as_http = False  # answer a too-old watch with HTTP 410 instead of ERROR
        self.replicasets = False  # run the ReplicaSet controller for every Deployment
        self.bookmarks_sent = 0
        self.serving_port = 8012  # the slices' "http" port: queue-proxy's, or a pod runner's
        self.by_host: list[tuple[str, str, str]] = []  # (Host header, method, path)
        self._pod_names = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        self.url = await self.listen()
        return self.url

    async def listen(self) -> str:
        """One more address serving the same state: give each client its own, and
        ``requests_from(url)`` tells their requests apart."""
        assert self._runner is not None, "start() first"
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    def requests_from(self, url: str) -> list[tuple[str, str]]:
        """(method, path) of every request that arrived at ``url`` (from ``listen()``)."""
        host = url.split("://", 1)[1]
        return [(m, p) for h, m, p in self.by_host if h == host]

    async def stop(self) -> None:
        self.break_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- test controls ---------------------------------------------------------------------------

    def compact(self, upto: int | None = None) -> None:
        """Forget history up to ``upto`` (default: now): a watch from an older version gets
        410 Gone."""
        upto = self._current_rv if upto is None else upto
        self._compacted_below = upto + 1
        self._log = [entry for entry in self._log if entry[0] > upto]

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
        """Delete an object at once (a pod too: use ``terminate`` for a graceful one)."""
        key = (prefix, plural, namespace, name)
        obj = self.objects.pop(key)
        rv = self._next_rv()
        prev = obj
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(rv)
        self._record(rv, key, "DELETED", obj, prev)

    def bookmark(self) -> None:
        """Send every watch that allowed bookmarks the current resourceVersion, as the API server
        does about once a minute, so a quiet, selective watch can resume after compaction."""
        for watcher in list(self._watchers):
            if watcher.bookmarks:
                kind = "Pod" if watcher.plural == "pods" else watcher.plural
                obj = {
                    "kind": kind,
                    "apiVersion": watcher.prefix.removeprefix("apis/").removeprefix("api/"),
                    "metadata": {"resourceVersion": str(self._current_rv)},
                }
                watcher.queue.put_nowait({"type": "BOOKMARK", "object": obj})
                self.bookmarks_sent += 1

    # -- pods: graceful deletion, a ReplicaSet and an endpoints controller --------------------

    def terminate(self, namespace: str, name: str) -> None:
        """A graceful delete: the pod stays listed with ``deletionTimestamp`` set, its endpoint
        turns not-ready and terminating, and its ReplicaSet (if any) counts it no more."""
        key = ("api/v1", "pods", namespace, name)
        pod = copy.deepcopy(self.objects[key])
        if pod["metadata"].get("deletionTimestamp"):
            return
        pod["metadata"]["deletionTimestamp"] = _now()
        pod["metadata"]["deletionGracePeriodSeconds"] = 30
        self._store(key, pod, "MODIFIED")
        self._update_endpoint(pod)
        owner = self._owner(pod)
        if owner is not None:
            self._sync_replicaset(namespace, owner)

    def finish_terminating(self, namespace: str, name: str) -> None:
        """The kubelet is done with a terminating pod: it goes from the API and its slice."""
        key = ("api/v1", "pods", namespace, name)
        pod = self.objects[key]
        assert pod["metadata"].get("deletionTimestamp"), f"{name} is not terminating"
        self._update_endpoint(pod, remove=True)
        self.delete(*key)

    def terminating(self, namespace: str) -> list[str]:
        return sorted(
            k[3]
            for k, o in self.objects.items()
            if k[:3] == ("api/v1", "pods", namespace) and o["metadata"].get("deletionTimestamp")
        )

    def pods_of(self, namespace: str, deployment: str) -> list[Json]:
        """The pods a Deployment's ReplicaSet owns, terminating ones included."""
        return [
            o
            for k, o in sorted(self.objects.items())
            if k[:3] == ("api/v1", "pods", namespace) and self._owner(o) == deployment
        ]

    def pod_ready(self, namespace: str, name: str, ip: str, *, ready: bool = True) -> None:
        """Scheduled, Running and (un)ready, and listed in the revision's private service."""
        key = ("api/v1", "pods", namespace, name)
        pod = copy.deepcopy(self.objects[key])
        pod.setdefault("spec", {})["nodeName"] = "node-1"
        pod["status"] = {
            "phase": "Running",
            "podIP": ip,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": _now(),
                }
            ],
        }
        self._store(key, pod, "MODIFIED")
        self._update_endpoint(pod)

    @staticmethod
    def _owner(pod: Json) -> str | None:
        for ref in pod["metadata"].get("ownerReferences") or ():
            if ref.get("kind") == "ReplicaSet":
                return str(ref["name"]).removesuffix("-rs")
        return None

    def _sync_replicaset(self, namespace: str, deployment: str) -> None:
        """The ReplicaSet controller's sync for one Deployment's (single) ReplicaSet."""
        obj = self.objects.get(("apis/apps/v1", "deployments", namespace, deployment))
        if obj is None:
            return
        wanted = int((obj.get("spec") or {}).get("replicas") or 0)
        active = [
            p
            for p in self.pods_of(namespace, deployment)
            if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        template = (obj.get("spec") or {}).get("template") or {}
        labels = dict((template.get("metadata") or {}).get("labels") or obj["metadata"]["labels"])
        for _ in range(wanted - len(active)):
            name = f"{deployment}-{next(self._pod_names):05d}"
            self.put(
                "api/v1",
                "pods",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": labels,
                        "ownerReferences": [
                            {"kind": "ReplicaSet", "name": f"{deployment}-rs", "controller": True}
                        ],
                        "creationTimestamp": _now_precise(),
                    },
                    "spec": copy.deepcopy(template.get("spec") or {}),
                    "status": {"phase": "Pending"},
                },
            )
        victims = sorted(active, key=replicaset_victim_order)[: max(0, len(active) - wanted)]
        for pod in victims:
            self.terminate(namespace, pod["metadata"]["name"])

    def _update_endpoint(self, pod: Json, *, remove: bool = False) -> None:
        """Knative's private service ``<revision>-private`` selects the revision's pods; its
        EndpointSlice lists each with queue-proxy's port, ready or not, terminating or not."""
        meta = pod["metadata"]
        revision = (meta.get("labels") or {}).get(REVISION_LABEL)
        ip = (pod.get("status") or {}).get("podIP")
        if not revision or (not ip and not remove):
            return
        namespace = meta.get("namespace", "")
        name = f"{revision}-private-emul"
        key = ("apis/discovery.k8s.io/v1", "endpointslices", namespace, name)
        current = self.objects.get(key)
        endpoints = [
            e
            for e in (current or {}).get("endpoints", [])
            if e["targetRef"]["name"] != meta["name"]
        ]
        if not remove:
            terminating = bool(meta.get("deletionTimestamp"))
            endpoints.append(
                {
                    "addresses": [ip],
                    "conditions": {
                        "ready": _pod_ready(pod) and not terminating,
                        "serving": _pod_ready(pod),
                        "terminating": terminating,
                    },
                    "targetRef": {"kind": "Pod", "name": meta["name"], "namespace": namespace},
                }
            )
        self.put(
            "apis/discovery.k8s.io/v1",
            "endpointslices",
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "addressType": "IPv4",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {
                        REVISION_LABEL: revision,
                        "kubernetes.io/service-name": f"{revision}-private",
                    },
                },
                "endpoints": endpoints,
                "ports": [
                    {"name": "http-queueadm", "port": 8022, "protocol": "TCP"},
                    {"name": "http", "port": self.serving_port, "protocol": "TCP"},
                ],
            },
        )

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
        prev = self.objects.get(key)
        self.objects[key] = obj
        self._record(rv, key, event, obj, prev)
        if self.replicasets and key[:2] == ("apis/apps/v1", "deployments"):
            before = ((prev or {}).get("spec") or {}).get("replicas")
            if before != (obj.get("spec") or {}).get("replicas"):
                self._sync_replicaset(key[2], key[3])
        return obj

    def _record(self, rv: int, key: Key, event: str, obj: Json, prev: Json | None) -> None:
        kind = f"{key[0]}/{key[1]}"
        obj, prev = copy.deepcopy(obj), copy.deepcopy(prev)
        self._log.append((rv, kind, event, obj, prev))
        for watcher in self._watchers:
            sent = watcher.event(kind, event, obj, prev)
            if sent is not None:
                watcher.queue.put_nowait(sent)

    # -- HTTP ------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        self.by_host.append((request.host, request.method, request.path))
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
            if plural == "pods":
                self.terminate(namespace, name)
                return web.json_response(self.objects[key])
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
        if since + 1 < self._compacted_below and self.gone_as_http:
            message = f"too old resource version: {since} ({self._compacted_below})"
            self.gone_sent.append(plural)
            return web.json_response(_status(410, "Expired", message), status=410)
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
        watcher = _Watcher(
            prefix,
            plural,
            namespace,
            request.query.get("labelSelector"),
            bookmarks=request.query.get("allowWatchBookmarks") in {"true", "1"},
        )
        for rv, kind, event, obj, prev in list(self._log):
            if rv > since:
                sent = watcher.event(kind, event, obj, prev)
                if sent is not None:
                    watcher.queue.put_nowait(sent)
        self._watchers.add(watcher)
        timeout = float(request.query.get("timeoutSeconds") or 300)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    queued = await watcher.queue.get()
                    if queued is None:
                        break
                    await send(queued)
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
