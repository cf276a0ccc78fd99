"""The control API of the embedded platform (loopback, bearer token).

``POST /v1/services`` (body: a Knative Service manifest), ``DELETE /v1/services/{ns}/{name}``,
``GET /v1/services``, ``GET /v1/status``. Errors use the same JSON shape as the activator.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from embedded.controlplane import ControlPlane, UnknownService
from embedded.report import status_document
from torpor import codec
from torpor.manifest import ManifestError
from torpor.openai_errors import openai_error
from torpor.status import RevisionStatus

MAX_MANIFEST_BYTES = 1024 * 1024


def error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(openai_error(message, kind, code), status_code=status)


def build_control_app(
    control: ControlPlane,
    statuses: Callable[[], Sequence[RevisionStatus]],
    *,
    token: str,
    activator_url: str,
    platform: Callable[[], dict[str, Any]] = dict,
    metrics: Callable[[], bytes] | None = None,
) -> Starlette:
    """The control API; ``metrics`` renders the autoscaler's Prometheus registry for
    ``GET /metrics`` (scraped with the control token as a bearer token, like every read)."""
    expected = token.encode()

    def authorised(request: Request) -> bool:
        # The scheme is case-insensitive (RFC 9110 section 11.1): ``bearer`` is ``Bearer``.
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), expected
        )

    async def apply(request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_MANIFEST_BYTES:
                return error(413, "manifest larger than 1 MiB", "invalid_request_error")
        try:
            applied = await control.apply(
                bytes(body), source=request.query_params.get("source", "<manifest>")
            )
        except ManifestError as e:
            return error(400, str(e), "invalid_manifest", e.field)
        service = applied.service
        return JSONResponse(
            {
                "service": service.key,
                "latest_revision": applied.latest_revision,
                "created_revision": applied.created_revision,
                "traffic": codec.to_jsonable(service.traffic),
                "url": f"{activator_url}/{service.namespace}/{service.name}",
                "host": f"{service.name}.{service.namespace}.{service.domain}",
            },
            status_code=201 if applied.created_revision else 200,
        )

    async def delete(request: Request) -> Response:
        namespace = request.path_params["namespace"]
        name = request.path_params["name"]
        try:
            removed = await control.delete(namespace, name)
        except UnknownService as e:
            return error(404, str(e), "not_found_error", "service_not_found")
        return JSONResponse({"deleted": removed.key})

    async def services(request: Request) -> Response:
        return JSONResponse({"services": codec.to_jsonable(control.services())})

    async def status(request: Request) -> Response:
        doc: dict[str, Any] = status_document(
            control.services(), statuses(), activator_url=activator_url
        )
        doc.update(platform())
        return JSONResponse(doc)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def prometheus(request: Request) -> Response:
        body = metrics() if metrics is not None else b""
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/v1/services", apply, methods=["POST"]),
        Route("/v1/services", services, methods=["GET"]),
        Route("/v1/services/{namespace}/{name}", delete, methods=["DELETE"]),
        Route("/v1/status", status, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    inner = Starlette(routes=routes)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            await (await healthz(Request(scope, receive)))(scope, receive, send)
            return
        if scope["type"] == "http" and not authorised(Request(scope)):
            response = error(401, "missing or wrong control token", "authentication_error")
            await response(scope, receive, send)
            return
        await inner(scope, receive, send)

    return app  # type: ignore[return-value]
