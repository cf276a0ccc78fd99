"""Hostile requests against the activator over real HTTP: they fail closed, never misroute.

Two services (``chat`` and ``other``) each have their own fake replica. Every hostile host or path
must either be answered by the activator itself with an error in the OpenAI shape, or reach the
one replica the request named (by Host, else by path prefix) with a path that cannot climb out of
what was named. Requests are written byte for byte on a raw socket, since HTTP clients normalise
exactly the things under test (dot segments, absolute-form targets, odd Host headers).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import pytest

from tests.activator.conftest import (
    ActivatorFactory,
    Running,
    Upstream,
    endpoints,
    serve,
    service,
)

CHAT = service("chat")
OTHER = service("other")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, object]:
        doc = json.loads(self.body)
        assert set(doc) == {"error"}, doc
        error: dict[str, object] = doc["error"]
        assert {"message", "type", "param", "code"} <= set(error), error
        assert isinstance(error["message"], str) and error["message"], error
        return error


async def raw(url: str, request: bytes) -> Reply:
    """Write ``request`` as is; read the whole answer (the request asks to close)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return Reply(int(lines[0].split()[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def get(target: str, host: str = "gateway", extra: bytes = b"") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode("latin-1")
        + extra
        + b"\r\n"
    )


@dataclass
class Two:
    running: Running
    chat: Upstream
    other: Upstream


@asynccontextmanager
async def two_services(running_activator: ActivatorFactory, **config: object) -> AsyncIterator[Two]:
    chat, other = Upstream("chat"), Upstream("other")
    async with (
        serve(chat) as chat_url,
        serve(other) as other_url,
        running_activator((CHAT, OTHER), **config) as running,
    ):
        await running.bus.publish_endpoints(endpoints("default/chat-00001", chat_url))
        await running.bus.publish_endpoints(endpoints("default/other-00001", other_url))
        yield Two(running, chat, other)


def _no_dot_segments(path: str) -> bool:
    decoded = unquote(unquote(path))  # twice: a replica or a framework may decode once more
    return not any(s in {".", ".."} for s in decoded.replace("\\", "/").split("/"))


# (request target, Host header, where it may go: "chat", "other" or None for "nowhere").
# The probe path is any path a replica serves (``/v1/models`` the activator answers itself).
HOSTILE_PATHS = [
    ("/default/chat/../other/v1/responses/p", "gateway", None),
    ("/default/chat/./v1/responses/p", "gateway", None),
    ("/default/chat/%2e%2e/other/v1/responses/p", "gateway", None),
    ("/default/chat/%2E%2E/other/v1/responses/p", "gateway", None),
    ("/default/chat/.%2e/other/v1/responses/p", "gateway", None),
    ("/default/chat/v1/../../other/v1/responses/p", "gateway", None),
    ("/default/chat%2F..%2Fother/v1/responses/p", "gateway", None),
    ("/default%2Fother/v1/responses/p", "gateway", None),
    ("/default/chat/v1%2F..%2F..%2Fmetrics", "gateway", None),
    ("/default/chat/v1/%252e%252e/metrics", "gateway", None),
    ("/default/chat/v1\\..\\..\\metrics", "gateway", None),
    ("//default/other/v1/responses/p", "gateway", None),
    ("/default//other/v1/responses/p", "gateway", None),
    ("/default/chat//v1/responses/p", "gateway", "chat"),
    ("/../default/other/v1/responses/p", "gateway", None),
    ("/%2e%2e/default/other/v1/responses/p", "gateway", None),
    ("/default/Chat/v1/responses/p", "gateway", None),
    ("/DEFAULT/chat/v1/responses/p", "gateway", None),
    ("/default/chat", "gateway", None),  # the replica's root is no client route (issue 23)
    ("/default/chat/v1/responses/p", "gateway", "chat"),
    ("/default/other/v1/responses/p", "gateway", "other"),
    # Host form: the Host names the service; the path goes unchanged to that service only.
    ("/v1/responses/p", "chat.default.example.com", "chat"),
    ("/v1/responses/p", "chat.default.example.com:8080", "chat"),
    ("/v1/responses/p", "CHAT.Default.EXAMPLE.com", "chat"),
    ("/v1/responses/p", "chat.default.example.com.", "chat"),
    ("/default/other/v1/responses/p", "chat.default.example.com", None),  # no client route
    ("/v1/../../default/other/v1/responses/p", "chat.default.example.com", None),
    ("/v1/%2e%2e/metrics", "chat.default.example.com", None),
    ("/v1/responses/p", "nope.default.example.com", None),
    ("/v1/responses/p", "chat.nope.example.com", None),
    ("/v1/responses/p", "x.chat.default.example.com", None),
    ("/v1/responses/p", "chat.default.example.com.evil.test", None),
    ("/v1/responses/p", "chat.default.example.com@other.default.example.com", None),
    ("/v1/responses/p", "other.default.example.com:80:chat", None),
    ("/v1/responses/p", "[::1]:8080", None),
    ("/v1/responses/p", "chat..default.example.com", None),
    ("/v1/responses/p", "a" * 4000 + ".default.example.com", None),
    # Not a host-form Host: the path decides.
    ("/default/chat/v1/responses/p", "chat.default.example.com.evil.test", "chat"),
    ("/default/chat/v1/responses/p", "a" * 4000, "chat"),
    # Absolute-form targets: the target's authority replaces the Host (RFC 9112 section 3.2.2).
    ("http://other.default.example.com/v1/responses/p", "chat.default.example.com", "other"),
    ("http://other.default.example.com/default/chat/v1/responses/p", "gateway", None),
    ("http://gateway/default/other/v1/responses/p", "chat.default.example.com", "other"),
    ("http://gateway/default/other/v1/responses/p", "gateway", "other"),
    ("http://chat.default.example.com@other.default.example.com/v1/responses/p", "gateway", None),
    ("http:///default/other/v1/responses/p", "gateway", None),
]


def _misrouted(two: Two, target: str, host: str, expect: str | None, reply: Reply) -> str | None:
    """Why this answer breaks the rule, or None."""
    case = f"{target[:80]!r} (Host {host[:60]!r})"
    reached = {u.name: u.seen for u in (two.chat, two.other) if u.seen}
    if expect is None:
        if reached:
            return f"{case} reached {list(reached)}"
        if not 400 <= reply.status < 500:
            return f"{case} answered {reply.status}"
        if reply.status in (400, 404):
            reply.error()  # the activator's own answer, in the OpenAI shape
        return None
    if list(reached) != [expect] or len(reached[expect]) != 1:
        return f"{case} reached {list(reached)}, not only {expect!r}"
    path = reached[expect][0].path
    if reply.status != 200 or json.loads(reply.body)["replica"] != expect:
        return f"{case} answered {reply.status}"
    if not path.startswith("/") or not _no_dot_segments(path):
        return f"{case} forwarded as {path!r}"
    return None


async def test_hostile_hosts_and_paths_never_misroute(
    running_activator: ActivatorFactory,
) -> None:
    # One platform for every case (a fresh one each would cost seconds); the fakes' records are
    # cleared between cases so each is judged on its own.
    failures = []
    async with two_services(running_activator) as two:
        for target, host, expect in HOSTILE_PATHS:
            two.chat.seen.clear()
            two.other.seen.clear()
            reply = await raw(two.running.url, get(target, host))
            if (why := _misrouted(two, target, host, expect, reply)) is not None:
                failures.append(why)
    assert failures == []


async def test_unknown_service_is_404_in_the_openai_shape(
    running_activator: ActivatorFactory,
) -> None:
    async with two_services(running_activator) as two:
        by_path = await raw(two.running.url, get("/default/nope/v1/models"))
        by_namespace = await raw(two.running.url, get("/elsewhere/chat/v1/models"))
        by_host = await raw(two.running.url, get("/v1/models", "nope.default.example.com"))
    for reply, name in ((by_path, "nope"), (by_namespace, "elsewhere"), (by_host, "nope")):
        assert reply.status == 404
        assert reply.headers["content-type"] == "application/json"
        error = reply.error()
        assert error["code"] == "not_found"
        assert name in str(error["message"])
    assert not two.chat.seen and not two.other.seen


async def test_hostile_names_are_not_echoed_unbounded(running_activator: ActivatorFactory) -> None:
    # An error message quotes what was asked for, but a 64 KiB path must not come back whole.
    async with two_services(running_activator) as two:
        reply = await raw(two.running.url, get("/default/" + "n" * 60_000 + "/v1/models"))
    assert reply.status in (400, 404, 414, 431)
    assert len(reply.body) < 2_000


async def test_body_over_the_limit_is_413_and_not_forwarded(
    running_activator: ActivatorFactory,
) -> None:
    async with two_services(running_activator, max_body_bytes=1000) as two:
        url = two.running.url
        big = b"x" * 1001
        declared = await raw(
            url,
            b"POST /default/chat/v1/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1001\r\nConnection: close\r\n\r\n"
            + big,
        )
        # A length far past the limit is refused from the header, before any body is read.
        lied = await raw(
            url,
            b"POST /default/chat/v1/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Length: 1000000000000\r\nConnection: close\r\n\r\n",
        )
        chunk = b"y" * 600
        chunked = await raw(
            url,
            b"POST /default/chat/v1/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2
            + b"0\r\n\r\n",
        )
    for reply in (declared, lied, chunked):
        assert reply.status == 413
        assert reply.error()["code"] == "request_too_large"
    assert not two.chat.seen and not two.other.seen


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"model": "tiny-chat", "prompt": ',
        b"\x00\x01 garbage }",
        b"[]",
        b"",
        b'{"prompt": "' + b"a" * 900 + b'"}',
    ],
)
async def test_bad_json_is_passed_through_for_the_replica_to_answer(
    running_activator: ActivatorFactory, body: bytes
) -> None:
    async with two_services(running_activator, max_body_bytes=1000) as two:
        reply = await raw(
            two.running.url,
            b"POST /default/chat/v1/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body,
        )
    assert reply.status == 200
    assert [s.body for s in two.chat.seen] == [body]
    assert not two.other.seen


async def test_trailers_never_reach_the_replica_as_headers(
    running_activator: ActivatorFactory,
) -> None:
    async with two_services(running_activator) as two:
        reply = await raw(
            two.running.url,
            b"POST /default/chat/v1/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"2\r\n{}\r\n0\r\nAuthorization: Bearer forged\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
        )
    assert reply.status == 200
    [seen] = two.chat.seen
    assert seen.body == b"{}"
    assert "authorization" not in seen.headers
    assert "6.6.6.6" not in seen.headers["x-forwarded-for"]
