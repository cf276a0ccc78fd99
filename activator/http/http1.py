"""The activator's HTTP/1.1 server protocol: httptools parsing, one ASGI app, little else.

uvicorn runs the activator (its ``Server`` owns sockets, signals and graceful shutdown), but the
per-connection protocol is this one instead of uvicorn's ``HttpToolsProtocol``. Profiled under
load, uvicorn's protocol and the asyncio work it does per request were a third of the
activator's CPU time; a proxy in front of every request cannot afford general-purpose checks it
never needs. What this protocol does differently:

- the status line and headers are held until the first body bytes and leave in the same write,
  and a body sent whole gets a ``content-length`` instead of chunked framing: a small answer is
  one ``write`` (uvicorn writes the head and the body separately);
- response headers are not re-validated with regular expressions (the activator's headers are
  its own or a replica's, already parsed by httptools);
- ``receive`` creates a future only when it really has to wait, and the keep-alive timer is one
  per connection, re-armed lazily, instead of one timer per request;
- a client's disconnect is reported through a callback the app registers
  (``activator.http.extensions.DISCONNECT_EXTENSION``), so the activator needs no task per
  request to watch ``receive()`` for it;
- a malformed request gets a JSON error in the OpenAI shape, like every other torpor error.

What it keeps from uvicorn: ASGI 3 semantics for ``http`` scopes, keep-alive and pipelining (one
response at a time, in order), ``Expect: 100-continue``, flow control in both directions, the
server's connection and task sets (so uvicorn's graceful shutdown waits for requests in flight
and cancels them at its deadline), and ``shutdown()``. WebSocket upgrades are not served (the
activator is configured with ``ws="none"``); such a request is answered as plain HTTP.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote

import httptools
from starlette.types import ASGIApp, Message
from uvicorn.config import Config
from uvicorn.server import ServerState

from activator.errors import (
    ActivatorError,
    HeadersTooLarge,
    InternalError,
    MalformedRequest,
    ShuttingDown,
    error_event,
    error_http,
    status_line,
)
from activator.http.extensions import DISCONNECT_EXTENSION

log = logging.getLogger("torpor.activator")

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; more -> 431
_HIGH_WATER = 64 * 1024  # request body bytes buffered before reading from the client pauses
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_NO_BODY_STATUS = frozenset({204, 304})


_STATUS_LINES = {code: status_line(code) for code in range(100, 600)}


class _Exchange:
    """One request and its response on a connection."""

    __slots__ = (
        "_delivered",
        "body",
        "bodyless",
        "buffered",
        "chunked",
        "disconnected",
        "event_stream",
        "expect_continue",
        "framing",
        "head",
        "is_head",
        "keep_alive",
        "more_body",
        "on_disconnect",
        "proto",
        "response_complete",
        "scope",
        "started",
        "waiter",
    )

    def __init__(self, proto: Http1Protocol, scope: dict[str, Any], keep_alive: bool) -> None:
        self.proto = proto
        self.scope = scope
        self.keep_alive = keep_alive
        self.is_head = scope["method"] == "HEAD"
        self.expect_continue = False
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.more_body = True  # the request body is still arriving
        # The end of the request body went to the app: further ``receive`` calls wait for the
        # disconnect (or the end of the response), as ASGI says.
        self._delivered = False
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        self.on_disconnect: Callable[[], None] | None = None
        self.head: bytes | None = None  # response head, held until the first body bytes
        self.started = False
        self.chunked = False
        self.framing = False  # this protocol adds content-length or chunked framing
        self.bodyless = False  # HEAD, 1xx, 204, 304: nothing follows the head
        self.event_stream = False
        self.response_complete = False

    # -- fed by the protocol --------------------------------------------------------------

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lost(self) -> None:
        """The client's connection is gone."""
        if self.disconnected:
            return
        self.disconnected = True
        self.wake()
        callback, self.on_disconnect = self.on_disconnect, None
        if callback is not None and not self.response_complete:
            callback()

    def watch(self, callback: Callable[[], None]) -> None:
        """The ``DISCONNECT_EXTENSION``: ``callback()`` once, when the client goes away."""
        if self.disconnected:
            callback()
        else:
            self.on_disconnect = callback

    # -- ASGI -----------------------------------------------------------------------------

    async def receive(self) -> Message:
        proto = self.proto
        if self.expect_continue and not self.disconnected:
            self.expect_continue = False
            proto.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not (self.disconnected or self.response_complete):
            if self.body or (not self.more_body and self.buffered == 0 and not self._delivered):
                break
            proto.resume_reading()
            self.waiter = proto.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        if len(self.body) == 1:
            data = self.body.popleft()
        else:
            data = b"".join(self.body)
            self.body.clear()
        self.buffered = 0
        self._delivered = not self.more_body
        proto.resume_reading()
        return {"type": "http.request", "body": data, "more_body": self.more_body}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started or self.response_complete:
                raise RuntimeError(
                    "http.response.body before http.response.start or after the end of the body"
                )
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            proto = self.proto
            if self.disconnected:
                self.response_complete = not more
                return
            head = self.head
            if head is not None:
                self.head = None
                proto.write(self._finish_head(head, body, more) + self._framed(body, more))
            else:
                data = self._framed(body, more)
                if data:
                    proto.write(data)
            if not more:
                self.response_complete = True
                proto.response_done(self)
            elif proto.write_paused:
                await proto.drain()
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.head = self._head(message)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on an http connection")

    def _head(self, message: Message) -> bytes:
        """Status line and the app's headers, less framing and ``connection`` (ours to set)."""
        status: int = message["status"]
        parts = [_STATUS_LINES.get(status) or status_line(status)]
        # A HEAD answer is framed as its GET would be (RFC 9110 9.3.2), without the body.
        self.framing = status >= 200 and status not in _NO_BODY_STATUS
        self.bodyless = self.is_head or not self.framing
        for name, value in message.get("headers", ()):
            lname = name.lower()
            if lname == b"content-length":
                self.framing = False  # the app gave the length; the body passes as it is
            elif lname == b"content-type":
                self.event_stream = value.startswith(b"text/event-stream")
            elif lname == b"transfer-encoding":
                continue
            elif lname == b"connection":
                if value.lower() == b"close":
                    self.keep_alive = False
                continue
            parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        return b"".join(parts)

    def _finish_head(self, head: bytes, body: bytes, more: bool) -> bytes:
        """The head with its framing: a body sent whole gets a length, a streamed one chunks."""
        if self.framing:
            if more:
                self.chunked = True
                return head + b"transfer-encoding: chunked\r\n\r\n"
            return head + b"content-length: %d\r\n\r\n" % len(body)
        return head + b"\r\n"

    def _framed(self, body: bytes, more: bool) -> bytes:
        if self.bodyless:
            return b""
        if not self.chunked:
            return body
        framed = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
        return framed if more else framed + b"0\r\n\r\n"


class Http1Protocol(asyncio.Protocol):
    """One client connection. Constructed by uvicorn (``Config(http=Http1Protocol)``)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = cast(ASGIApp, config.loaded_app)
        self.loop = _loop or asyncio.get_event_loop()
        # uvicorn types this set with its own protocol classes; it only calls ``shutdown()``.
        self.connections = cast(set[Any], server_state.connections)
        self.tasks = server_state.tasks
        self.keep_alive_s = float(config.timeout_keep_alive)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.current: _Exchange | None = None  # the exchange whose response is being written
        self.parsing: _Exchange | None = None  # the exchange whose request is being read
        self.pipeline: collections.deque[_Exchange] = collections.deque()
        self.read_paused = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._closing = False  # no new requests (server shutdown, or connection: close)
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.connections.add(self)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.server = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._idle_since = 0.0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Not served: the request is answered as plain HTTP (see module doc), and as the
            # parser reads nothing after an upgrade, the connection closes after that answer.
            self._closing = True
            for exchange in (self.current, *self.pipeline):
                if exchange is not None:
                    exchange.keep_alive = False
        except httptools.HttpParserError as exc:
            # An exception raised in a callback arrives wrapped, with the original as context.
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(HeadersTooLarge("Request headers are too large."))
            else:
                self._refuse(MalformedRequest(f"Invalid HTTP request: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for exchange in (self.current, self.parsing, *self.pipeline):
            if exchange is not None:
                exchange.lost()
        self.pipeline.clear()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        url = self._url
        if url[:1] == b"/":
            raw, _, query = url.partition(b"?")
        else:
            # Absolute form (``GET http://host/path``) or ``*``: only the path and query count;
            # the authority in the target never picks a service.
            parsed = httptools.parse_url(url)
            raw, query = parsed.path or b"/", parsed.query or b""
        path = raw.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": parser.get_http_version(),
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw,
            "query_string": query,
            "headers": self._headers,
        }
        exchange = _Exchange(self, scope, parser.should_keep_alive() and not self._closing)
        scope["extensions"] = {DISCONNECT_EXTENSION: exchange.watch}
        for name, value in self._headers:
            if name == b"expect" and value.lower() == b"100-continue":
                exchange.expect_continue = True
        self.parsing = exchange
        if self.current is None:
            self._start(exchange)
        else:
            self.pipeline.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.response_complete:
            return
        exchange.body.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > _HIGH_WATER:
            self.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.more_body = False
            exchange.wake()

    # -- exchanges ------------------------------------------------------------------------

    def _start(self, exchange: _Exchange) -> None:
        self.current = exchange
        task = self.loop.create_task(self._run(exchange))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, exchange: _Exchange) -> None:
        try:
            await self.app(exchange.scope, exchange.receive, exchange.send)
        except asyncio.CancelledError:
            # Only the server cancels a request (uvicorn, at its graceful-shutdown deadline; the
            # activator handles its own client disconnects): say so in the answer.
            self._last_words(exchange, ShuttingDown("The activator is shutting down."))
            raise
        except Exception:
            log.exception("activator request failed")
            self._last_words(exchange, InternalError("Internal error in the activator."))
            return
        if not exchange.response_complete:
            self._last_words(exchange, InternalError("The activator sent no answer."))

    def _last_words(self, exchange: _Exchange, error: ActivatorError) -> None:
        """End an exchange its app could not finish: a typed error, then close."""
        if not exchange.disconnected and not exchange.response_complete:
            if not exchange.started or exchange.head is not None:
                self.write(error_http(error))
            elif exchange.event_stream and exchange.chunked:
                # A token stream must not look finished: an error event, as for a dying replica.
                event = error_event(error, tail=b"\n")  # (a lone newline: close any open event)
                self.write(exchange._framed(event, more=False))
        self._close()

    def response_done(self, exchange: _Exchange) -> None:
        """Called by the exchange when its last body bytes were written."""
        if exchange is not self.current:
            return
        self.current = None
        exchange.wake()  # a receive() waiting for the disconnect returns now
        if not exchange.keep_alive or self._closing or exchange is self.parsing:
            # (The last case: answered before its body was all read, e.g. a 413; reading the
            # rest only to throw it away is not worth keeping the connection.)
            self._close()
            return
        if self.pipeline:
            self._start(self.pipeline.popleft())
            if not self.pipeline:
                self.resume_reading()
            return
        self.resume_reading()
        self._idle_since = self.loop.time()
        self._arm_idle()

    # -- keep-alive -------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        if self._idle_timer is None and self.transport is not None:
            self._idle_since = self._idle_since or self.loop.time()
            self._idle_timer = self.loop.call_at(
                self._idle_since + self.keep_alive_s, self._idle_check
            )

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.current is not None or self.parsing is not None:
            return  # busy: re-armed when the exchange ends
        if self._idle_since and self.loop.time() >= self._idle_since + self.keep_alive_s:
            self._close()
        else:
            self._arm_idle()

    # -- uvicorn's server calls this on graceful shutdown -------------------------------------

    def shutdown(self) -> None:
        self._closing = True
        if self.current is None:
            self._close()
        else:
            self.current.keep_alive = False

    # -- writing and flow -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drain(self) -> None:
        if self.write_paused and self.transport is not None and not self.transport.is_closing():
            if self._drain is None:
                self._drain = self.loop.create_future()
            await asyncio.shield(self._drain)

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.pipeline:
            self.read_paused = False
            self.transport.resume_reading()

    def _refuse(self, error: ActivatorError) -> None:
        if self.current is None or not self.current.started:
            self.write(error_http(error))
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _HeadTooLarge(Exception):
    pass
