"""Reading server-sent events the way the SSE spec splits lines, for load generators."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx


async def sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    """Lines as SSE defines them (ended by CR, LF or CRLF), decoded after splitting.

    Not ``aiter_lines``: it splits like ``str.splitlines``, also at U+2028, U+0085 and friends,
    which a model may well generate inside a JSON string (random weights do).
    """
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        *lines, buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")
    if buffer:
        yield buffer.decode("utf-8", "replace")
