"""A small pooled HTTP/1.1 client for talking to replicas, built on asyncio and httptools.

Why not aiohttp or httpx: measured on this project's 2-core machine (64 concurrent GETs of a
90-byte JSON body from a uvicorn upstream), aiohttp's client spent about 110 us of CPU per
request and httpx about 2000 us; the activator's whole budget is well under that. The replica
side is narrow and known (vLLM's uvicorn server, HTTP/1.1, loopback or pod network), so a client
that writes the request in one call and lets httptools (the parser uvicorn uses) read the answer
does the job at a fraction of the cost. What it leaves out on purpose: TLS, proxies, redirects,
cookies, HTTP/2, ``Expect: 100-continue`` (the body is already in hand), and bodies delimited
only by the server closing the connection (an HTTP/1.1 server that keeps connections alive, as
vLLM's uvicorn does, always sends a length or chunks; a close-delimited body reads as a failure).

Per connection, one request at a time; a connection goes back to the pool when its response is
complete and both sides said keep-alive. Idle connections are dropped before the server's own
keep-alive timeout (uvicorn's is 5 s), so a request is never written into a socket the replica is
about to close — that race would leave no safe way to retry.
"""

from __future__ import annotations

import asyncio
import collections
from typing import cast
from urllib.parse import urlsplit

import httptools

from activator.errors import ConnectError, UpstreamClosed

IDLE_TIMEOUT_S = 4.0  # below uvicorn's default keep-alive timeout of 5 s
MAX_IDLE_PER_ORIGIN = 512
# Response bytes buffered before reading from the replica pauses (it resumes once they are taken).
_HIGH_WATER = 256 * 1024

Headers = list[tuple[bytes, bytes]]


class Response:
    """One upstream response: status and headers first, then body chunks as they are parsed."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_head",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: Headers = []
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None

    async def next_chunk(self) -> bytes | None:
        """All body bytes that arrived since the last call, or None once the body is complete.

        Several chunks parsed from one read (SSE events often come several to a packet) leave
        together, so the client side pays one write for them, not one each.
        """
        while True:
            if self._chunks:
                chunks = self._chunks
                chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                self._conn.resume()
                return chunk
            if self._error is not None:
                raise self._error
            if self._done:
                return None
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    @property
    def complete(self) -> bool:
        """The whole body has been handed out."""
        return self._done and not self._chunks and self._error is None

    def close(self) -> None:
        """Abandon the response: an incomplete one closes the connection (the replica sees it)."""
        if not self._done:
            self._conn.close()

    # -- fed by the connection --------------------------------------------------------------

    def _headers_done(self, status: int) -> None:
        self.status = status
        if not self._head.done():
            self._head.set_result(None)

    def _body(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _complete(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._done:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_header_name",
        "_keep_alive",
        "_parser",
        "_paused",
        "_pool",
        "_response",
        "closed",
        "key",
        "last_used",
        "loop",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.loop = asyncio.get_running_loop()
        self._pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: Response | None = None
        self._keep_alive = False
        self._paused = False
        self.closed = False
        self.last_used = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._abort(UpstreamClosed(f"malformed response from replica: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._response is not None:
            self._response._fail(UpstreamClosed("replica closed the connection mid-response"))
            self._response = None

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._response is not None:
            self._response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        if self._response is not None:
            self._response._headers_done(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._body(body)

    def on_message_complete(self) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        response._complete()
        if self._keep_alive and not self.closed:
            self.resume()  # a paused connection must not go back to the pool
            self._pool.put_back(self)
        else:
            self.close()

    # -- used by the pool -------------------------------------------------------------------

    def start(self, request: bytes) -> Response:
        response = Response(self)
        self._response = response
        assert self.transport is not None
        self.transport.write(request)
        return response

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    def _abort(self, error: BaseException) -> None:
        if self._response is not None:
            self._response._fail(error)
            self._response = None
        self.close()


class UpstreamPool:
    """Keep-alive connections per replica origin (``host:port``)."""

    def __init__(self, connect_timeout_s: float = 5.0) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._origins: dict[str, tuple[str, int, bytes, str]] = {}

    async def request(
        self, base_url: str, method: str, target: str, headers: Headers, body: bytes
    ) -> Response:
        """Send a request; returns once the response's status and headers are in.

        Raises ``ConnectError`` if no connection could be made (nothing was sent) and
        ``UpstreamClosed`` if the replica went away before answering.
        """
        host, port, host_header, prefix = self._origin(base_url)
        conn = self._take_idle((host, port))
        if conn is None:
            conn = await self._connect(host, port)
        parts = [
            method.encode("latin-1"),
            b" ",
            (prefix + target).encode("latin-1"),
            b" HTTP/1.1\r\nhost: ",
            host_header,
            b"\r\n",
        ]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        parts += (b"\r\n", body)
        response = conn.start(b"".join(parts))
        try:
            await response._head
        except BaseException:
            response.close()
            raise
        if method == "HEAD":
            # A HEAD answer's Content-Length describes a body that never comes; httptools cannot
            # be told, so the connection is used once.
            response._complete()
            conn._response = None
            conn.close()
        return response

    def put_back(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.last_used = conn.loop.time()
        idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def aclose(self) -> None:
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let transports finish closing

    def _take_idle(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()  # most recently used first: warmest, least likely to be timed out
            if not conn.closed and now - conn.last_used < IDLE_TIMEOUT_S:
                return conn
            conn.close()
        return None

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, (host, port)), host, port
                )
        except (OSError, TimeoutError) as exc:
            raise ConnectError(f"could not connect to {host}:{port}: {exc}") from exc
        return conn

    def _origin(self, base_url: str) -> tuple[str, int, bytes, str]:
        origin = self._origins.get(base_url)
        if origin is None:
            parts = urlsplit(base_url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"replica URL must be http://host[:port][/prefix], got {base_url}")
            port = parts.port or 80
            host_header = parts.netloc.encode("latin-1")
            origin = (parts.hostname, port, host_header, parts.path.rstrip("/"))
            self._origins[base_url] = origin
        return origin
