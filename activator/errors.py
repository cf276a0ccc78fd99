"""Every way a request can fail inside the activator, and the one place each maps to a status.

Errors are raised as typed exceptions wherever they are found (routing, the wait queue, the
proxy) and turned into an HTTP answer here, in the OpenAI error shape that every OpenAI client
already knows how to surface:
``{"error": {"message": ..., "type": ..., "param": null, "code": ...}}``.
"""

from __future__ import annotations

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


class NotFound(ActivatorError):
    """No service, tag or revision matches the request's host or path."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class BadRequest(ActivatorError):
    """The request cannot be routed safely (e.g. dot segments in the path)."""

    status = 400
    type = "invalid_request_error"
    code = "bad_request"


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
    """Held past the revision's ``timeoutSeconds`` without a replica with room."""

    status = 504
    type = "server_error"
    code = "timeout"


class RevisionFailed(ActivatorError):
    """The revision's replica failed to start; the message carries the runtime's own error."""

    status = 503
    type = "server_error"
    code = "revision_failed"


class UpstreamUnavailable(ActivatorError):
    """Could not reach any replica (connection refused, reset before a response)."""

    status = 502
    type = "server_error"
    code = "upstream_unavailable"


class ClientGone(Exception):
    """The client disconnected; nothing is answered (there is no one to answer)."""


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
