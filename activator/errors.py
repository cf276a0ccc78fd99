"""Every way a request can fail inside the activator, and the one place each maps to an answer.

Errors are raised as typed exceptions wherever they are found (the HTTP transport, routing, the
wait queue, the proxy, the replica client) and turned into an answer here, in the OpenAI error
shape (``torpor.openai_errors``) that every OpenAI client already knows how to surface:
``{"error": {"message": ..., "type": ..., "param": null, "code": ...}}``. Each class fixes its
status, ``type`` and ``code``; the serializers below are the only code that writes an error, as
an ASGI answer (``error_response``), as raw HTTP bytes from the transport (``error_http``) or
as an SSE event inside a stream that has already started (``error_event``).

This module imports nothing of the activator, so the transport (``activator.http``) and the
application can both use it without depending on each other.
"""

from __future__ import annotations

import http
import json

from torpor.openai_errors import openai_error


class ActivatorError(Exception):
    """Base of every error the activator answers itself. Subclasses fix status, type and code."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []


# -- found by the HTTP transport (``activator.http.http1``) ---------------------------------------


class MalformedRequest(ActivatorError):
    """The bytes are not an HTTP/1.x request this server accepts (parser error, Host rules)."""

    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class HeadersTooLarge(ActivatorError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class RequestTimeout(ActivatorError):
    """The client took too long to send its request head or body (slowloris)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class TooManyConnections(ActivatorError):
    """This activator holds its connection cap; the client should come back later."""

    status = 503
    type = "server_error"
    code = "too_many_connections"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class ShuttingDown(ActivatorError):
    """The server cancelled the request at its graceful-shutdown deadline."""

    status = 503
    type = "server_error"
    code = "shutting_down"


class InternalError(ActivatorError):
    """A bug: the application raised, or ended without an answer."""


# -- found by the application (routing, auth, the wait queue, the proxy) ---------------------------


class NotFound(ActivatorError):
    """No service, tag or revision matches the request's host or path."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """A request at the root URL names a model no single service serves (OpenAI's own code)."""

    code = "model_not_found"


class BadRequest(ActivatorError):
    """The request cannot be routed safely (e.g. dot segments in the path)."""

    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class PlatformEndpoint(ActivatorError):
    """A path of vLLM's operator API (adapter loading, sleep, profiling, weights): the platform's
    to call on a replica, never a client's through the activator."""

    status = 403
    type = "permission_error"
    code = "platform_endpoint"


class BodyTooLarge(ActivatorError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class QueueFull(ActivatorError):
    """The revision's wait queue is at its bound; the client should come back later."""

    status = 503
    type = "server_error"
    code = "queue_full"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after_s).encode())]


class WaitTimeout(ActivatorError):
    """Past the revision's ``timeoutSeconds`` (waiting for a replica, or waiting on one)."""

    status = 504
    type = "server_error"
    code = "timeout"


class RevisionFailed(ActivatorError):
    """The revision's replica failed to start; the message carries the runtime's own error."""

    status = 503
    type = "server_error"
    code = "revision_failed"


class ReplicaCrashLoop(ActivatorError):
    """The revision's replicas keep dying before or soon after they become ready, and the
    autoscaler waits before it starts the next one (the kubelet's CrashLoopBackOff). The message
    names the last death's short reason and when the next try is; ``Retry-After`` says in how
    many seconds. A request after that time is held and starts the next try."""

    status = 503
    type = "server_error"
    code = "replica_crash_loop"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after_s).encode())]


class AdapterFailed(ActivatorError):
    """The LoRA adapter the request names failed to load on a replica; the message carries the
    first line of the replica's answer. The next request for it has the load tried again."""

    status = 503
    type = "server_error"
    code = "adapter_failed"


class UpstreamUnavailable(ActivatorError):
    """Could not reach any replica (connection refused, reset before a response)."""

    status = 502
    type = "server_error"
    code = "upstream_unavailable"


class ConnectFailed(UpstreamUnavailable):
    """The replica refused the connection before any request byte was sent (safe to retry)."""


class EngineDead(UpstreamUnavailable):
    """The replica answered, but its engine is gone (vLLM's ``EngineDeadError``: the API server
    still runs, the engine core process does not). Nothing of it reached the client, so the
    request is retried on another replica or held for the next one, a bounded number of times
    (``activator.proxy.MAX_ENGINE_DEAD_RETRIES``); answered as this when no retry was possible
    or the bound is reached (unless the revision is in a crash loop: ``ReplicaCrashLoop``)."""

    code = "engine_dead"


class UpstreamCut(UpstreamUnavailable):
    """The replica failed after its answer had started (sent as an event inside the stream)."""

    code = "upstream_closed"


# -- not answered ---------------------------------------------------------------------------------


class ClientGone(Exception):
    """The client disconnected; nothing is answered (there is no one to answer)."""


class ConnectError(OSError):
    """Raised by the replica client: nothing was sent, so a retry elsewhere is safe."""


class UpstreamClosed(ConnectionError):
    """Raised by the replica client: the replica closed before the response was complete."""


# -- serialization: the only code that writes an error ------------------------------------------


def error_body(error: ActivatorError) -> bytes:
    return json.dumps(openai_error(error.message, error.type, error.code)).encode()


def error_response(error: ActivatorError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body for an error; the only place statuses are decided."""
    body = error_body(error)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *error.headers(),
    ]
    return error.status, headers, body


def status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


def error_http(error: ActivatorError) -> bytes:
    """The whole HTTP/1.1 answer, written by the transport; the connection closes after it."""
    status, headers, body = error_response(error)
    head = b"".join(b"%s: %s\r\n" % header for header in headers)
    return status_line(status) + head + b"connection: close\r\n\r\n" + body


def error_event(error: ActivatorError, tail: bytes = b"") -> bytes:
    """An SSE event that ends a started token stream with ``error``, which OpenAI clients raise.

    ``tail`` is the last body bytes already sent: a half-sent event is closed first, so the
    error arrives as an event of its own.
    """
    sep = b"" if not tail or tail.endswith((b"\n\n", b"\r\n\r\n")) else b"\n\n"
    return sep + b"data: " + error_body(error) + b"\n\n"
