from __future__ import annotations

import json

import pytest

from activator.errors import (
    ActivatorError,
    BadRequest,
    BodyTooLarge,
    ConnectFailed,
    HeadersTooLarge,
    InternalError,
    MalformedRequest,
    NotFound,
    QueueFull,
    ReplicaCrashLoop,
    RequestTimeout,
    RevisionFailed,
    ShuttingDown,
    TooManyConnections,
    UpstreamCut,
    UpstreamUnavailable,
    WaitTimeout,
    error_event,
    error_http,
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
        (ReplicaCrashLoop("x", 40), 503),
        (UpstreamUnavailable("x"), 502),
        (ConnectFailed("x"), 502),
        (UpstreamCut("x"), 502),
        (MalformedRequest("x"), 400),
        (HeadersTooLarge("x"), 431),
        (RequestTimeout("x"), 408),
        (TooManyConnections("x"), 503),
        (ShuttingDown("x"), 503),
        (InternalError("x"), 500),
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


def test_a_crash_loop_says_when_the_next_try_is() -> None:
    _, headers, body = error_response(ReplicaCrashLoop("looping", 40))
    assert dict(headers)[b"retry-after"] == b"40"
    assert json.loads(body)["error"]["code"] == "replica_crash_loop"
    # A time already past is still a time to come back at, not 0.
    assert ReplicaCrashLoop("x", 0).headers() == [(b"retry-after", b"1")]


def test_client_errors_are_invalid_request_errors_and_server_errors_server_errors() -> None:
    for error in (MalformedRequest("x"), HeadersTooLarge("x"), RequestTimeout("x")):
        assert error.type == "invalid_request_error"
    for error in (TooManyConnections("x"), ShuttingDown("x"), InternalError("x")):
        assert error.type == "server_error"


def test_the_transport_answer_is_the_same_error_and_closes() -> None:
    raw = error_http(RequestTimeout("too slow"))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in lines
    assert b"content-length: %d" % len(body) in lines
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_an_error_event_closes_a_half_sent_event_first() -> None:
    assert error_event(InternalError("x"), tail=b"data: {").startswith(b"\n\ndata: ")
    assert error_event(InternalError("x"), tail=b"data: {}\n\n").startswith(b"data: ")
    assert error_event(InternalError("x")).endswith(b"\n\n")
