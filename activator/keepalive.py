"""Feedback while held: SSE comments for a streaming request waiting for a replica (issue 14).

A client held through a cold start sees nothing for seconds to minutes, and proxies and clients
with idle timeouts (nginx's ``proxy_read_timeout`` is 60 s, many load balancers' idle timeouts
60-350 s) cut it. So a request that asked for a token stream (``"stream": true``) and is still
waiting ``interval_s`` after it started waiting gets the response head (200,
``text/event-stream``) and then one SSE comment line, ``: waiting for a replica``, every
``interval_s`` until it has a replica. SSE comments are ignored by every conforming parser,
the official OpenAI clients' included, so the tokens that follow parse as usual.

What that commits to: the status (200) is on the wire with the first comment, so whatever goes
wrong later (the wait times out, the revision fails to start, the replica answers with an error
status or refuses) reaches the client as an SSE ``data:`` event carrying the OpenAI error object,
which OpenAI clients raise as an ``APIError``, not as a status. A replica's non-200 answer is
turned into such an event (its own error body when it is one).

Not for plain JSON requests: their status and ``content-length`` come from the replica, so no
byte can go out before the replica answers; they wait in silence as before. Nor for a request
that gets its replica within ``interval_s``: its answer is exactly the replica's.

Cost: nothing for a request that finds a replica with room (the common case; checked without a
timer); one timer for a request that has to wait; the body is parsed for ``stream`` only once
that timer fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.types import Message, Send

from activator.errors import ActivatorError, UpstreamUnavailable, error_event
from activator.models import wants_stream
from activator.queue import RevisionQueue

COMMENT = b": waiting for a replica\n\n"
_HEAD = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]


def would_wait(queue: RevisionQueue, adapter: str | None = None) -> bool:
    """Whether a request now would have to wait (others wait already, or no replica has room).

    For a LoRA ``adapter`` only the replicas listing it count: a request held while the adapter
    is loaded (or while a replica starts for it) waits like one at zero.
    """
    if queue.queued or not queue.has_serving(adapter):
        return True
    cc = queue.limits.container_concurrency
    eligible = [
        b
        for b in queue.backends
        if not b.draining and (adapter is None or adapter in b.adapters)
    ]
    return cc > 0 and all(b.in_flight >= cc for b in eligible)


class HeldStream:
    """Keep-alive comments for one request while it waits; then relays the replica's answer.

    ``arm()`` before the wait, ``await settle()`` after it (always: it stops the comments and
    waits for one being written). If ``committed``, answer through ``relay`` (as the ``send`` of
    the forward) and report failures with ``fail``.
    """

    __slots__ = (
        "_body",
        "_buffer",
        "_checked",
        "_interval_s",
        "_send",
        "_sending",
        "_status",
        "_timer",
        "committed",
        "sent",
    )

    def __init__(self, send: Send, body: bytes, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._send = send
        self._body = body
        self._interval_s = interval_s
        self._timer: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None
        self._checked = False
        self._status = 200
        self._buffer: list[bytes] = []
        self.committed = False
        self.sent = 0  # keep-alive comments written

    def arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self._checked:
            self._checked = True
            if not wants_stream(self._body):
                return  # a plain request: nothing to send before the replica answers
        if self._sending is not None and not self._sending.done():
            return  # the last comment is still being written: a slow reader, skip one
        loop = asyncio.get_running_loop()
        self._sending = loop.create_task(self._comment())
        self._timer = loop.call_later(self._interval_s, self._tick)

    async def _comment(self) -> None:
        if not self.committed:
            self.committed = True
            await self._send({"type": "http.response.start", "status": 200, "headers": _HEAD})
        await self._send({"type": "http.response.body", "body": COMMENT, "more_body": True})
        self.sent += 1

    async def settle(self) -> None:
        """Stop the comments; wait for one in progress (a client gone shows up elsewhere)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sending, self._sending = self._sending, None
        if sending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(sending)

    async def relay(self, message: Message) -> None:
        """The forward's ``send`` once committed: the replica's head is already answered."""
        if message["type"] == "http.response.start":
            self._status = message["status"]
            return
        if self._status == 200:
            await self._send(message)
            return
        # The replica refused (4xx/5xx) after our 200 went out: its answer becomes an event.
        self._buffer.append(message.get("body", b""))
        if not message.get("more_body", False):
            body = b"".join(self._buffer)
            await self._send({"type": "http.response.body", "body": _as_event(self._status, body)})

    async def fail(self, error: ActivatorError) -> None:
        """End the committed stream with ``error`` as an SSE error event."""
        await self._send({"type": "http.response.body", "body": error_event(error)})


def _as_event(status: int, body: bytes) -> bytes:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return b"data: " + json.dumps(parsed).encode() + b"\n\n"  # vLLM's own error object
    text = body[:300].decode("utf-8", "replace")
    return error_event(UpstreamUnavailable(f"replica answered {status}: {text}"))
