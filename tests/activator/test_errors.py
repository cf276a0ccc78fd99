from __future__ import annotations

import json

import pytest

from activator.errors import (
    ActivatorError,
    BadRequest,
    BodyTooLarge,
    NotFound,
    QueueFull,
    RevisionFailed,
    UpstreamUnavailable,
    WaitTimeout,
    error_response,
)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFound("x"), 404),
        (BadRequest("x"), 400),
        (BodyTooLarge("x"), 413),
        (QueueFull("x"), 503),
        (WaitTimeout("x"), 504),
        (RevisionFailed("x"), 503),
        (UpstreamUnavailable("x"), 502),
    ],
)
def test_each_error_has_one_status_and_the_openai_shape(error: ActivatorError, status: int) -> None:
    code, headers, body = error_response(error)
    assert code == status
    assert dict(headers)[b"content-type"] == b"application/json"
    assert int(dict(headers)[b"content-length"]) == len(body)
    payload = json.loads(body)
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["message"] == "x"
    assert payload["error"]["param"] is None


def test_queue_full_says_when_to_retry() -> None:
    _, headers, _ = error_response(QueueFull("full", retry_after_s=3))
    assert dict(headers)[b"retry-after"] == b"3"
