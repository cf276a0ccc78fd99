"""How the activator is served: uvicorn with uvloop and httptools, writing each answer in one go.

uvicorn's httptools protocol writes a response's status line and headers to the socket as soon as
``http.response.start`` is sent, and the body in a second write. For a proxy whose answers are
mostly small, that second system call is a large share of the cost per request (on loopback a
write also runs the receiver's side of TCP). ``CorkedHttpToolsProtocol`` gives uvicorn a
transport that gathers the writes made while one callback runs and sends them together at the
end of it, so a small answer leaves in one write; streamed chunks still leave as they come,
one loop turn later at most.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _CorkedTransport:
    """Delegates to a transport, except that writes within one loop turn become one write."""

    __slots__ = ("_buffer", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(b) for b in self._buffer)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._buffer.clear()
        self._transport.abort()

    def _flush(self) -> None:
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CorkedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a transport that coalesces writes (see module doc)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        corked = _CorkedTransport(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(corked)  # type: ignore[arg-type]


def uvicorn_config(app: ASGIApp, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """The activator's uvicorn settings; ``overrides`` pass through to ``uvicorn.Config``."""
    settings: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": CorkedHttpToolsProtocol,
        "ws": "none",
        "lifespan": "off",
        "access_log": False,
        "log_level": "warning",
        # The activator writes X-Forwarded-* itself; uvicorn's rewriting of client and scheme
        # from them would only cost time per request.
        "proxy_headers": False,
        # The replica's own Date and Server headers pass through; uvicorn's would duplicate them.
        "server_header": False,
        "date_header": False,
        "backlog": 4096,
    }
    settings.update(overrides)
    return uvicorn.Config(app, **settings)
