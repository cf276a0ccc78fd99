"""Forwarding one request to one replica and streaming the answer back as it arrives.

Response bytes go to the client chunk by chunk as the replica's socket yields them, so SSE token
streams are not held back. Bodies pass through untouched (no decompression, chunked framing
redone by the server), and hop-by-hop headers are dropped in both directions (RFC 9110 section
7.6.1). The client is ``activator.http.upstream.UpstreamPool`` (why not aiohttp or httpx: see
there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.types import Send

from activator.balancer import Backend
from activator.deadlines import Deadline
from activator.errors import (
    ConnectError,
    ConnectFailed,
    EngineDead,
    UpstreamClosed,
    UpstreamCut,
    UpstreamUnavailable,
    WaitTimeout,
    error_event,
)
from activator.http.upstream import Headers, Response, UpstreamPool
from activator.queue import RevisionQueue

log = logging.getLogger("torpor.activator")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Also never forwarded: the length (recomputed from the body read once), the host (the replica's
# own address goes out; the original travels in X-Forwarded-Host) and Expect (the body is
# already in hand, so there is nothing to wait for a 100 Continue about).
_DROP_REQUEST = frozenset(h.encode() for h in HOP_BY_HOP) | {
    b"content-length",
    b"host",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
}
_DROP_RESPONSE = frozenset(h.encode() for h in HOP_BY_HOP)


def upstream_headers(raw: Headers, client: tuple[str, int] | None, scheme: str) -> Headers:
    """The client's headers minus hop-by-hop ones, plus the usual X-Forwarded-* trio."""
    connection_named: set[bytes] = set()
    forwarded_for = b""
    host = b""
    for name, value in raw:
        if name == b"connection":
            connection_named.update(v.strip().lower() for v in value.split(b","))
        elif name == b"host":
            host = value
        elif name == b"x-forwarded-for":
            forwarded_for = value
    out = [
        (name, value)
        for name, value in raw
        if name not in _DROP_REQUEST and name not in connection_named
    ]
    if client is not None:
        address = client[0].encode("latin-1")
        forwarded_for = forwarded_for + b", " + address if forwarded_for else address
    if forwarded_for:
        out.append((b"x-forwarded-for", forwarded_for))
    if host:
        out.append((b"x-forwarded-host", host))
    out.append((b"x-forwarded-proto", scheme.encode("latin-1")))
    return out


async def forward(
    pool: UpstreamPool,
    base_url: str,
    method: str,
    path_and_query: str,
    headers: Headers,
    body: bytes,
    send: Send,
    deadline: Deadline | None = None,
) -> int:
    """Send one request to ``base_url`` and stream its response to ``send``; returns the status.

    Raises ``ConnectFailed`` when nothing reached the replica (safe to retry elsewhere) and
    ``UpstreamUnavailable`` when the replica failed before answering. Once the response has
    started, an upstream failure raises ``UpstreamClosed`` (no retry: bytes already went both
    ways); an event stream first gets an error event so the client learns why it ended.

    ``deadline`` is the end of the revision's ``timeoutSeconds`` for the whole request. Past
    it before the answer started: ``WaitTimeout`` (a 504). Past it in an event stream: a
    ``timeout`` error event ends the stream properly (504 is returned, for the metrics). Past
    it in any other started body: ``UpstreamClosed``, the body is cut. (One coroutine, and the
    deadline entered and left without ``async with``: in front of every request, each extra
    frame and context manager showed in the activator's CPU time per request.)
    """
    if deadline is not None:
        deadline.enter()
    response: Response | None = None
    started = False
    tail = b""
    try:
        try:
            response = await pool.request(base_url, method, path_and_query, headers, body)
        except ConnectError as exc:
            raise ConnectFailed(f"could not connect to replica at {base_url}: {exc}") from exc
        except (UpstreamClosed, OSError) as exc:
            raise UpstreamUnavailable(
                f"replica at {base_url} failed before answering: {exc}"
            ) from exc
        # The first body bytes are read before the start is sent: an answer saying that the
        # replica's engine is dead (a plain 500, or a 200 stream whose first event is that
        # error) has then reached no one, and is retried elsewhere (``forward_retrying``).
        try:
            first = await response.next_chunk()
        except (UpstreamClosed, OSError) as exc:
            raise UpstreamUnavailable(
                f"replica at {base_url} failed before answering: {exc}"
            ) from exc
        if first and _engine_dead(response.status, first):
            raise EngineDead(f"replica at {base_url} answered that its engine is dead")
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [h for h in response.headers if h[0] not in _DROP_RESPONSE],
            }
        )
        started = True
        chunk = first
        while chunk is not None:
            # The last chunk says so itself when it is known to be last (a small answer arrives
            # whole), which saves the server a separate write for the end of the body.
            last = response.complete
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            tail = chunk or tail
            if last:
                return response.status
            chunk = await response.next_chunk()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return response.status
    except (UpstreamClosed, OSError) as exc:
        if started and response is not None and _is_event_stream(response.headers):
            # A token stream cut by a dying replica must not look like a finished one: end it
            # with an error event, which OpenAI clients raise as an APIError.
            with contextlib.suppress(Exception):
                event = _error_event(base_url, exc, tail)
                await send({"type": "http.response.body", "body": event, "more_body": False})
        raise
    except asyncio.CancelledError:
        if deadline is None or not deadline.leave(cancelled=True):
            raise  # the client went away, or the server is shutting down
        deadline = None
        error = WaitTimeout(f"replica at {base_url} did not finish within timeoutSeconds")
        if not started or response is None:
            raise error from None
        if _is_event_stream(response.headers):
            # As for a dying replica: a token stream must not look finished.
            event = error_event(error, tail)
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return error.status
        raise UpstreamClosed(error.message) from None
    finally:
        if deadline is not None:
            deadline.leave(cancelled=False)
        # Closing an unfinished response closes its connection, which is how the replica learns
        # that the client went away (vLLM aborts the generation when its client disconnects).
        if response is not None:
            response.close()


def _is_event_stream(headers: Headers) -> bool:
    return any(
        n.lower() == b"content-type" and v.lower().startswith(b"text/event-stream")
        for n, v in headers
    )


def _error_event(base_url: str, exc: BaseException, tail: bytes) -> bytes:
    error = UpstreamCut(f"replica at {base_url} failed in the middle of the response: {exc}")
    return error_event(error, tail)


# What vLLM says when its engine core is gone but its API server still answers:
# ``EngineDeadError`` ("EngineCore encountered an issue. See stack trace (above) for the root
# cause.") as a 500 JSON body, or, for a stream, as the first event of a 200 (the error is raised
# inside the streaming generator). vLLM's /health answers 503 from then on.
_ENGINE_DEAD_MARKERS = (b"EngineCore encountered an issue", b"EngineDeadError")
_STREAM_ERROR = b'data: {"error"'


def _engine_dead(status: int, first: bytes) -> bool:
    """Whether a response whose first body bytes are ``first`` says the engine is dead."""
    if status >= 500 or (status == 200 and first.startswith(_STREAM_ERROR)):
        return any(marker in first for marker in _ENGINE_DEAD_MARKERS)
    return False


MAX_ATTEMPTS = 4  # a request is sent at most this often, each time before any byte went back
# A request whose replica answered that its engine is dead is retried at most this often: a
# revision whose engines die at their first request (a crash loop) must not pass it from one
# dying replica to the next until its deadline.
MAX_ENGINE_DEAD_RETRIES = 2


async def forward_retrying(
    queue: RevisionQueue,
    backend: Backend,
    pool: UpstreamPool,
    method: str,
    path_and_query: str,
    headers: Headers,
    body: bytes,
    send: Send,
    deadline: Deadline,
    adapter: str | None = None,
) -> int:
    """``forward`` on ``backend`` (a slot of ``queue`` it holds), retried while no byte was sent.

    A request that reached no byte of an answer to the client is sent again, all within the one
    ``deadline``: if the replica refused the connection or answered that its engine is dead, to
    a replica not tried yet, or held for the next one (``queue.acquire`` waits and pokes the
    autoscaler when every serving replica was tried); a replica whose engine is dead is also
    taken out of rotation for every later request. If the replica closed the connection before
    answering, to any replica, the same one included: a pooled connection the replica had just
    closed is no reason to shun it, and a replica that died answers the next try with a refused
    connection. (A completion has no effect but its answer, so sending it again is safe.) Each
    slot is released when its attempt ends. Once the answer has started nothing is retried.

    An engine that died is retried past at most ``MAX_ENGINE_DEAD_RETRIES`` times; past that,
    or past ``MAX_ATTEMPTS``, the request is answered: with ``ReplicaCrashLoop`` when the
    revision is in a crash loop by then (the reason its engines die), else with the last error
    (``EngineDead``, 502 ``engine_dead``, saying how many engines died under it). A held retry
    of a revision that goes into a crash loop gets that answer from the queue.
    """
    shunned: list[str] = []
    attempts = 0
    dead = 0
    while True:
        attempts += 1
        try:
            return await forward(
                pool, backend.url, method, path_and_query, headers, body, send, deadline
            )
        except UpstreamUnavailable as exc:
            if isinstance(exc, EngineDead):
                queue.take_out(backend, exc.message)
                dead += 1
            if isinstance(exc, ConnectFailed | EngineDead):
                shunned.append(backend.replica_id)
            if attempts >= MAX_ATTEMPTS or dead > MAX_ENGINE_DEAD_RETRIES:
                crash = queue.crash_loop_error()
                if crash is not None:
                    raise crash from exc
                if dead > MAX_ENGINE_DEAD_RETRIES:
                    raise EngineDead(
                        f"{exc.message}; the engine died under this request on {dead} replicas "
                        "in a row, so it is not sent to another"
                    ) from exc
                raise
            log.info("retrying a request for %s: %s", queue.revision, exc.message)
        finally:
            queue.release(backend)
        backend = await queue.acquire(tuple(shunned), deadline.when, retry=True, adapter=adapter)
