"""How the activator is served: uvicorn's server with uvloop and torpor's own HTTP/1.1 protocol.

uvicorn's ``Server`` owns the listening sockets, signals and the graceful shutdown; each
connection is an ``activator.http.http1.Http1Protocol`` (why not uvicorn's protocol: see there).
"""

from __future__ import annotations

from typing import Any

import uvicorn
from starlette.types import ASGIApp

from activator.http.http1 import Http1Protocol, HttpLimits


def uvicorn_config(
    app: ASGIApp, host: str, port: int, limits: HttpLimits | None = None, **overrides: Any
) -> uvicorn.Config:
    """The activator's uvicorn settings; ``overrides`` pass through to ``uvicorn.Config``.

    ``limits``: read deadlines and the connection cap (``HttpLimits``; its defaults when None).
    """
    protocol = Http1Protocol if limits is None else Http1Protocol.with_limits(limits)
    settings: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": protocol,
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
