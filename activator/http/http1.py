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
- a malformed request gets a JSON error in the OpenAI shape, like every other torpor error,
  in its place in the pipeline (after the answers to the requests before it).

What it guards against (``HttpLimits``, defaults below, set through
``activator.http.server.uvicorn_config``): a client that sends its request head slowly
(slowloris) or stalls in its body is answered ``408`` and closed; connections beyond the cap get
``503`` and close, and connections that are not serving a request (idle keep-alive, or still
sending a head) give way to new ones before the cap is reached, so they can never fill the
reserve that keeps room for real requests. A request is read as RFC 9112 says: chunked
trailers never join the headers, HTTP/1.1 needs exactly one ``Host`` and an absolute-form
target's authority replaces it, and an HTTP/1.0 client gets a streamed body delimited by the
close instead of chunked coding, which it cannot read.

What it keeps from uvicorn: ASGI 3 semantics for ``http`` scopes, keep-alive and pipelining (one
response at a time, in order), ``Expect: 100-continue``, flow control in both directions, the
server's connection and task sets (so uvicorn's graceful shutdown waits for requests in flight
and cancels them at its deadline), and ``shutdown()``. WebSocket upgrades are not served (the
activator is configured with ``ws="none"``); such a request is answered as plain HTTP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast
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
    RequestTimeout,
    ShuttingDown,
    TooManyConnections,
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

# A client sends its request line and headers in one write, in microseconds on a pod network;
# ten seconds is generous for any real client and short for one that trickles a byte at a time.
HEAD_TIMEOUT_S = 10.0
# Between two reads of a request body while the server is reading it (flow-control pauses do not
# count). A body is at most ``ActivatorConfig.max_body_bytes`` (8 MiB), read whole before it is
# forwarded, so a client that stops sending it for this long is not coming back.
BODY_IDLE_TIMEOUT_S = 30.0
# The whole body, from the end of its head (issue 23): a client that keeps a request alive with a
# byte every 20 s never trips the idle timeout above. 8 MiB (the largest body) in 60 s is a rate
# of 140 KB/s; a prompt of 100 KB needs 1.7 KB/s. Time the server is not reading (flow control,
# pipelining, ``Expect: 100-continue``) does not count.
BODY_TIMEOUT_S = 60.0
# File descriptors kept out of the connection cap for everything else the process opens: the
# listening socket, the bus connection, log files, the event loop's own.
FD_RESERVE = 64
MIN_CONNECTIONS = 16


def default_max_connections(nofile: int | None = None) -> int:
    """The connection cap a process with an ``RLIMIT_NOFILE`` soft limit of ``nofile`` can keep.

    Every proxied request holds two descriptors (the client's and the replica's connection), so
    at most half of what is left after ``FD_RESERVE`` can be client connections; past that a
    flood of idle clients would leave real requests no descriptor for their replica.
    """
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            nofile = 1 << 20
    return max(MIN_CONNECTIONS, (nofile - FD_RESERVE) // 2)


@dataclass(frozen=True)
class HttpLimits:
    """How long a client may take to send a request, and how many connections one process holds.

    ``reserve``: when that many or fewer connection slots are left, every new connection makes
    the longest-quiet connection (idle keep-alive, or still sending its head) give way, so
    clients that send nothing cannot take the last slots from clients with real requests.
    Past ``max_connections`` with no quiet connection to shed, a new one gets a 503.
    """

    head_timeout_s: float = HEAD_TIMEOUT_S
    body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S
    max_connections: int = field(default_factory=default_max_connections)
    reserve: int = -1  # -1: a tenth of max_connections
    body_timeout_s: float = BODY_TIMEOUT_S  # the whole body, however it trickles

    def __post_init__(self) -> None:
        if self.head_timeout_s <= 0 or self.body_idle_timeout_s <= 0 or self.body_timeout_s <= 0:
            raise ValueError("HTTP read timeouts must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.reserve == -1:
            object.__setattr__(self, "reserve", self.max_connections // 10)
        if not 0 <= self.reserve < self.max_connections:
            raise ValueError("reserve must be at least 0 and below max_connections")


_STATUS_LINES = {code: status_line(code) for code in range(100, 600)}


class _Exchange:
    """One request and its response on a connection."""

    __slots__ = (
        "_delivered",
        "body",
        "bodyless",
        "buffered",
        "chunked",
        "close_delimited",
        "close_sent",
        "disconnected",
        "event_stream",
        "expect_continue",
        "framing",
        "head",
        "http10",
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
        self.http10 = scope["http_version"] == "1.0"
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
        self.close_delimited = False  # an HTTP/1.0 stream: the body ends with the connection
        self.close_sent = False  # the head says ``connection: close``
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
            self.close_sent = True
            parts.append(b"connection: close\r\n")
        return b"".join(parts)

    def _finish_head(self, head: bytes, body: bytes, more: bool) -> bytes:
        """The head with its framing: a body sent whole gets a length, a streamed one chunks."""
        if self.framing and more and self.http10:
            # HTTP/1.0 has no chunked coding (RFC 9112 section 7): the end of the body is the end
            # of the connection.
            self.close_delimited = True
            self.keep_alive = False
        if not self.keep_alive and not self.close_sent:
            # Decided after the head was built (the stream above, a graceful shutdown).
            self.close_sent = True
            head += b"connection: close\r\n"
        if self.close_delimited:
            return head + b"\r\n"
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
    """One client connection. Constructed by uvicorn (``Config(http=Http1Protocol)``).

    ``limits`` is a class attribute because uvicorn constructs the protocol with its own
    arguments only; ``with_limits`` makes the subclass that carries other limits.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[Http1Protocol]:
        return type(cls.__name__, (cls,), {"limits": limits})

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
        self._in_trailers = False  # past the head of the request being read: trailer fields
        # When the bytes being waited for (the rest of a head, the next body bytes) are late; 0
        # while none are. One timer per connection, re-armed lazily like the keep-alive one.
        self._read_deadline = 0.0
        self._read_timer: asyncio.TimerHandle | None = None
        self._body_deadline = 0.0  # when the body being read must be whole; 0: none is read
        self._quiet_since = 0.0  # when the connection last stopped serving a request
        # An error for a request behind others in the pipeline: answered after theirs.
        self._pending_error: ActivatorError | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._quiet_since = self.loop.time()
        if not self._make_room():
            self.write(error_http(TooManyConnections("The activator has too many connections.")))
            self._close()
            return
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
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.error)
            else:
                self._refuse(MalformedRequest(f"Invalid HTTP request: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
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
        self._in_trailers = False
        self._expect_bytes(self.limits.head_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _Refused(HeadersTooLarge("Request headers are too large."))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _Refused(HeadersTooLarge("Request headers are too large."))
        if self._in_trailers:
            # A chunked body's trailer fields (RFC 9112 section 7.1.2) are not headers: merged,
            # a trailer ``Authorization`` or ``X-Forwarded-For`` would reach the replica as one,
            # unseen by everything that checked the head. Nothing here needs them; dropped.
            return
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        url = self._url
        http_version = parser.get_http_version()
        hosts = [value for name, value in self._headers if name == b"host"]
        # RFC 9112 section 3.2: an HTTP/1.1 request has exactly one Host; more than one is a 400
        # in any version (which of them would name the service?).
        if len(hosts) > 1 or (not hosts and http_version != "1.0"):
            raise _Refused(MalformedRequest("A request needs exactly one Host header."))
        if http_version not in ("1.0", "1.1"):  # an ``HTTP/2.0`` request line is not HTTP/2
            raise _Refused(MalformedRequest(f"HTTP/{http_version} is not served here."))
        if url[:1] == b"/":
            raw, _, query = url.partition(b"?")
        else:
            # Absolute form (``GET http://host/path``) or ``*``.
            parsed = httptools.parse_url(url)
            raw, query = parsed.path or b"/", parsed.query or b""
            if parsed.schema:
                # RFC 9112 section 3.2.2: the target's authority replaces the Host header, so
                # whatever picks the service and the X-Forwarded-Host the replica sees agree.
                self._headers = [h for h in self._headers if h[0] != b"host"]
                self._headers.append((b"host", _authority(url)))
        path = raw.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": http_version,
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
        self._in_trailers = True
        self._body_deadline = self.loop.time() + self.limits.body_timeout_s
        self._expect_bytes(min(self.limits.body_idle_timeout_s, self.limits.body_timeout_s))
        if self.current is None:
            self._start(exchange)
        else:
            self.pipeline.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        self._read_deadline = min(
            self.loop.time() + self.limits.body_idle_timeout_s, self._body_deadline
        )
        exchange = self.parsing
        if exchange is None or exchange.response_complete:
            return
        exchange.body.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > _HIGH_WATER:
            self.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        self._read_deadline = 0.0
        self._body_deadline = 0.0
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.more_body = False
            exchange.wake()

    # -- read deadlines and the connection cap ------------------------------------------------

    def _expect_bytes(self, within_s: float) -> None:
        self._read_deadline = self.loop.time() + within_s
        timer = self._read_timer
        if timer is not None and timer.when() > self._read_deadline:
            # A shorter deadline than the one armed (a body's after a long head deadline).
            timer.cancel()
            self._read_timer = timer = None
        if timer is None and self.transport is not None:
            self._read_timer = self.loop.call_at(self._read_deadline, self._read_check)

    def _read_check(self) -> None:
        self._read_timer = None
        deadline = self._read_deadline
        if not deadline or self._closing:
            return
        now = self.loop.time()
        if self.parsing is None:
            limit, what = self.limits.head_timeout_s, "request head"
        else:
            limit, what = self.limits.body_idle_timeout_s, "next request body bytes"
        waiting = self.parsing
        if self.read_paused or (waiting is not None and waiting.expect_continue):
            # The server stopped reading (flow control, pipelining) or has not yet asked for the
            # body (``Expect: 100-continue``): the client is not late.
            self._read_deadline = deadline = now + limit
            if self._body_deadline:
                self._body_deadline = max(self._body_deadline, now + limit)
        if now < deadline:
            self._read_timer = self.loop.call_at(deadline, self._read_check)
            return
        if waiting is not None and self._body_deadline and now >= self._body_deadline:
            limit, what = self.limits.body_timeout_s, "whole request body"
        self._refuse(RequestTimeout(f"The {what} did not arrive within {limit:g} s."))

    def _quiet(self) -> bool:
        """Serving no request: idle between requests, or still reading a request's head."""
        return self.current is None and self.parsing is None and not self._closing

    def _make_room(self) -> bool:
        """Whether this new connection may stay, after shedding a quiet one if slots are short."""
        connections = self.connections
        limits = self.limits
        if len(connections) < limits.max_connections - limits.reserve:
            return True
        # Linear, but only this close to the cap; under a flood of idle connections each new one
        # replaces the longest-quiet one, so the flood never holds the reserve for long.
        quiet = [c for c in connections if isinstance(c, Http1Protocol) and c._quiet()]
        if quiet:
            min(quiet, key=lambda c: c._quiet_since)._shed()
        return len(connections) < limits.max_connections

    def _shed(self) -> None:
        """Give way to a new connection: a head in progress is answered 503, an idle one closed."""
        self.connections.discard(self)
        if self._read_deadline:
            self.write(error_http(TooManyConnections("The activator has too many connections.")))
        self._close()

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
            elif exchange.event_stream and (exchange.chunked or exchange.close_delimited):
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
        if not exchange.keep_alive or exchange is self.parsing:
            # (The last case: answered before its body was all read, e.g. a 413; reading the
            # rest only to throw it away is not worth keeping the connection.)
            self._close()
            return
        pending = self._pending_error
        if pending is not None and not self.pipeline:
            # The requests before the bad one are answered: now its error, then the close.
            self.write(error_http(pending))
            self._close()
            return
        if self._closing and pending is None:
            self._close()
            return
        if self.pipeline:
            self._start(self.pipeline.popleft())
            if not self.pipeline:
                self.resume_reading()
            return
        self.resume_reading()
        self._quiet_since = self._idle_since = self.loop.time()
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
        if (
            self.read_paused
            and self.transport is not None
            and not self.pipeline
            and self._pending_error is None
        ):
            self.read_paused = False
            self.transport.resume_reading()

    def _refuse(self, error: ActivatorError) -> None:
        """Answer the request being read with ``error`` in its turn, then close.

        When the request is the one being served (its body was bad or late), the error replaces
        its answer if none has started. A request behind others in the pipeline (or one whose
        head is not complete) is answered after them: the requests before it were whole and
        already went on, and each client reads answers in the order it sent requests.
        """
        self._read_deadline = 0.0
        target, self.parsing = self.parsing, None
        current = self.current
        if current is not None and target is not current:
            if target is not None:
                with contextlib.suppress(ValueError):
                    self.pipeline.remove(target)
            self._pending_error = error
            self._closing = True
            self.pause_reading()
            return
        if current is None or not current.started:
            self.write(error_http(error))
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _Refused(Exception):
    """Raised in a parser callback: the request is answered with ``error`` and the close."""

    def __init__(self, error: ActivatorError) -> None:
        super().__init__(error.message)
        self.error = error


def _authority(url: bytes) -> bytes:
    """The authority of an absolute-form target, as sent; userinfo or none at all is a 400."""
    rest = url.partition(b"://")[2]
    end = len(rest)
    for stop in (b"/", b"?", b"#"):
        at = rest.find(stop)
        if at != -1:
            end = min(end, at)
    authority = rest[:end]
    if not authority or b"@" in authority:
        raise _Refused(MalformedRequest("An absolute-form target needs a host and no userinfo."))
    return authority
