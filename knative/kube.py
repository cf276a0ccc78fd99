"""The one module that imports ``kubernetes``: a small asyncio face on the official client.

Why the official synchronous client in threads rather than ``kubernetes_asyncio``: the official
client is already a dependency of the ``kubernetes`` extra, tracks the API most closely, and its
configuration (in-cluster service account, kubeconfig) is the one operators know. Its calls block,
so each runs on a thread pool owned by this object (not asyncio's small default pool, which six
long-lived watches would exhaust). Watches are cancelled by shutting their socket down from the
event loop, which unblocks the reading thread at once.

Everything crosses this seam as plain JSON dicts — the wire format — so the controller above
never touches client model classes, and tests can serve the same JSON from an emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kubernetes
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from knative.errors import KubeError
from knative.resources import (
    DEPLOYMENTS,
    ENDPOINTSLICES,
    PODS,
    Resource,
)

T = TypeVar("T")
Json = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
_THREAD_EXIT_S = 5.0


def _raise_kube_error(exc: ApiException) -> KubeError:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return KubeError(int(exc.status or 0), str(exc.reason or ""), str(body or ""))


LIST_TIMEOUT_S = 30.0


class Kube:
    """Async calls against one API server. Create with ``in_cluster()``, ``from_kubeconfig()``
    or ``for_host()`` (tests); close with ``aclose()``."""

    def __init__(
        self, api_client: Any, *, max_threads: int = 16, request_timeout_s: float = 30.0
    ) -> None:
        # Every request's timeout but a list's: the Knative entry point passes the Lease's call
        # timeout (knative.lease.LeaseConfig.call_timeout_s), shorter than the Lease (issue 22,
        # fix 5).
        self._request_timeout_s = request_timeout_s
        self._client = api_client
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._apps = kubernetes.client.AppsV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._coordination = kubernetes.client.CoordinationV1Api(api_client)
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="kube")
        self._open_streams: set[Any] = set()

    @classmethod
    def in_cluster(cls, *, request_timeout_s: float = 30.0) -> Kube:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        return cls(kubernetes.client.ApiClient(), request_timeout_s=request_timeout_s)

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, *, request_timeout_s: float = 30.0) -> Kube:
        kubernetes.config.load_kube_config(config_file=path)  # type: ignore[no-untyped-call]
        return cls(kubernetes.client.ApiClient(), request_timeout_s=request_timeout_s)

    @classmethod
    def for_host(cls, host: str) -> Kube:
        configuration = kubernetes.client.Configuration()
        configuration.host = host
        return cls(kubernetes.client.ApiClient(configuration))

    async def aclose(self) -> None:
        for stream in list(self._open_streams):
            _shutdown(stream)
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._client.close)

    async def _call(
        self, fn: Callable[..., Any], *args: Any, _timeout_s: float | None = None, **kwargs: Any
    ) -> Json:
        """Run one request on the pool and return the response body as JSON."""
        timeout = _timeout_s or self._request_timeout_s

        def blocking() -> Json:
            try:
                response = fn(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
            except ApiException as exc:
                raise _raise_kube_error(exc) from None
            except urllib3.exceptions.HTTPError as exc:
                # No answer at all (refused, reset, timed out): the callers' retry and step-down
                # rules apply, as for an error status; a process that crashed here would
                # crash-loop through every API server restart.
                raise KubeError(0, type(exc).__name__, str(exc)) from None
            data: Json = json.loads(response.data or b"{}")
            return data

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, blocking)

    # -- generic reads ---------------------------------------------------------------------------

    def _list_fn(self, resource: Resource) -> Callable[..., Any]:
        if resource == PODS:
            return self._core.list_pod_for_all_namespaces
        if resource == DEPLOYMENTS:
            return self._apps.list_deployment_for_all_namespaces
        if resource == ENDPOINTSLICES:
            api = kubernetes.client.DiscoveryV1Api(self._client)
            return api.list_endpoint_slice_for_all_namespaces
        return functools.partial(
            self._custom.list_cluster_custom_object,
            resource.group,
            resource.version,
            resource.plural,
        )

    async def list(self, resource: Resource, *, label_selector: str | None = None) -> Json:
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        # A list (10,000 objects) is a read no leadership depends on: the long timeout.
        return await self._call(self._list_fn(resource), _timeout_s=LIST_TIMEOUT_S, **kwargs)

    async def watch(
        self,
        resource: Resource,
        resource_version: str,
        *,
        label_selector: str | None = None,
        timeout_s: int = 300,
    ) -> AsyncGenerator[Json, None]:
        """Yield watch events (``{"type": ..., "object": ...}``) from ``resource_version``.

        ERROR events are yielded as they come (a 410 arrives that way); the caller decides.
        Ends when the server closes the stream (``timeoutSeconds``).
        """
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_s,
            "_preload_content": False,
            # Connect timeout, then a read timeout a little past the server's own.
            "_request_timeout": (10, timeout_s + 30),
        }
        if label_selector:
            kwargs["label_selector"] = label_selector
        list_fn = self._list_fn(resource)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Json | BaseException | None] = asyncio.Queue()

        def put(item: Json | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed while the thread finished
                loop.call_soon_threadsafe(queue.put_nowait, item)

        opened: list[Any] = []
        closing = threading.Event()

        def read() -> None:
            try:
                try:
                    response = list_fn(**kwargs)
                except ApiException as exc:
                    put(_raise_kube_error(exc))
                    return
                opened.append(response)
                self._open_streams.add(response)
                # The consumer may have gone while the request was in flight: it could not
                # see this response to shut it down, so the thread does.
                if closing.is_set():
                    _shutdown(response)
                for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                    if line:
                        put(json.loads(line))
                put(None)
            except BaseException as exc:  # the socket was shut down, or the network failed
                put(exc)
            finally:
                for response in opened:
                    self._open_streams.discard(response)
                    response.release_conn()

        future = loop.run_in_executor(self._pool, read)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            closing.set()
            for response in opened:
                _shutdown(response)
            # Bounded: a thread that somehow stays blocked is left to its read timeout rather
            # than holding up whoever is cancelling this watch.
            await asyncio.wait({future}, timeout=_THREAD_EXIT_S)

    # -- writes ---------------------------------------------------------------------------------

    async def get_custom(self, resource: Resource, namespace: str, name: str) -> Json:
        return await self._call(
            self._custom.get_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
        )

    async def create_custom(self, resource: Resource, namespace: str, body: Json) -> Json:
        return await self._call(
            self._custom.create_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            body,
        )

    async def replace_custom(
        self, resource: Resource, namespace: str, name: str, body: Json
    ) -> Json:
        return await self._call(
            self._custom.replace_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            body,
        )

    async def replace_custom_status(
        self, resource: Resource, namespace: str, name: str, body: Json
    ) -> Json:
        return await self._call(
            self._custom.replace_namespaced_custom_object_status,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            body,
        )

    async def read_deployment_scale(self, namespace: str, name: str) -> Json:
        return await self._call(self._apps.read_namespaced_deployment_scale, name, namespace)

    async def patch_deployment_scale(self, namespace: str, name: str, body: Json) -> Json:
        return await self._call(
            self._apps.patch_namespaced_deployment_scale,
            name,
            namespace,
            body,
            _content_type=MERGE_PATCH,
        )

    async def patch_pod(self, namespace: str, name: str, body: Json) -> Json:
        return await self._call(
            self._core.patch_namespaced_pod, name, namespace, body, _content_type=MERGE_PATCH
        )

    async def read_lease(self, namespace: str, name: str) -> Json:
        return await self._call(self._coordination.read_namespaced_lease, name, namespace)

    async def create_lease(self, namespace: str, body: Json) -> Json:
        lease = kubernetes.client.V1Lease.from_dict(body)
        return await self._call(self._coordination.create_namespaced_lease, namespace, lease)

    async def replace_lease(self, namespace: str, name: str, body: Json) -> Json:
        lease = kubernetes.client.V1Lease.from_dict(body)
        return await self._call(self._coordination.replace_namespaced_lease, name, namespace, lease)


def _shutdown(response: Any) -> None:
    # urllib3 >= 2.3: unblocks a read in progress on another thread.
    with contextlib.suppress(Exception):
        response.shutdown()
