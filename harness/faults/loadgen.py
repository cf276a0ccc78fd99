"""A bounded load generator that classifies how every request ended.

Loopback only, bounded in count and in time: ``Load.run`` sends at most ``count`` requests (mixed
plain and streaming OpenAI calls, round robin over the targets) from ``concurrency`` workers and
stops sending at ``deadline_s``; each request has its own ``timeout_s``. Every request ends in
exactly one ``Outcome``:

- ``ok``: a complete answer (a JSON completion with choices; a stream that reached ``[DONE]``);
- ``error``: a typed error — an HTTP error status with an OpenAI-shaped body whose message is
  not empty, or an ``error`` event inside a stream — counted by ``kind`` (status and code);
- ``refused``: the connection was refused, so nothing was accepted (the platform is down for a
  restart); the client knows at once and no work was started;
- ``lost``: everything else — no answer, a stream cut without an error event, an error without
  a message, a hang past the timeout. The target is zero.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import httpx

from harness.sse import sse_lines


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # the service
    base_url: str  # ends with /v1
    model: str


@dataclass(frozen=True, slots=True)
class Outcome:
    target: str
    stream: bool
    result: str  # ok | error | refused | lost
    kind: str = ""  # for errors: "<status> <code>"; for lost: why
    message: str = ""
    seconds: float = 0.0
    phase: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    phase: str = ""  # stamped on each outcome added, to tell the faults' effects apart

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(replace(outcome, phase=self.phase))

    def by_phase(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = {}
        for o in self.outcomes:
            out.setdefault(o.phase, Counter())[o.result] += 1
        return {phase: dict(c) for phase, c in out.items()}

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def count(self, result: str) -> int:
        return sum(o.result == result for o in self.outcomes)

    def kinds(self, result: str) -> dict[str, int]:
        return dict(Counter(o.kind for o in self.outcomes if o.result == result))

    def lost(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == "lost"]

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "answered": self.count("ok"),
            "typed_errors": self.count("error"),
            "typed_errors_by_kind": self.kinds("error"),
            "refused_while_down": self.count("refused"),
            "lost": self.count("lost"),
            "lost_by_kind": self.kinds("lost"),
            "streaming": sum(o.stream for o in self.outcomes),
            "by_phase": self.by_phase(),
        }


def _typed(status: int, body: bytes) -> tuple[str, str] | None:
    """``(kind, message)`` when ``body`` is an OpenAI-shaped error that says what happened."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return None
    message = error.get("message")
    if not isinstance(message, str) or not message.strip():
        return None
    code = error.get("code") or error.get("type") or "error"
    return f"{status} {code}", message


def _payload(target: Target, stream: bool, max_tokens: int, i: int) -> dict[str, Any]:
    return {
        "model": target.model,
        "messages": [{"role": "user", "content": f"request {i}: say something"}],
        "max_tokens": max_tokens,
        "stream": stream,
        # Random weights would often stop at once; a fixed length keeps streams long enough
        # for a fault to land in the middle of one.
        "ignore_eos": True,
    }


async def call(
    client: httpx.AsyncClient,
    target: Target,
    *,
    stream: bool,
    max_tokens: int,
    timeout_s: float,
    i: int = 0,
    on_first_chunk: asyncio.Event | None = None,
) -> Outcome:
    """One chat completion, classified."""
    started = time.monotonic()

    def done(result: str, kind: str = "", message: str = "") -> Outcome:
        return Outcome(
            target.name, stream, result, kind, message[:4000], time.monotonic() - started
        )

    url = target.base_url + "/chat/completions"
    body = _payload(target, stream, max_tokens, i)
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    raw = await response.aread()
                    typed = _typed(response.status_code, raw)
                    if typed is None:
                        return done("lost", f"{response.status_code} untyped", raw[:200].decode())
                    return done("error", *typed)
                if not stream:
                    raw = await response.aread()
                    try:
                        doc = json.loads(raw)
                    except ValueError:
                        return done("lost", "200 not json", raw[:200].decode("latin-1"))
                    if not doc.get("choices"):
                        return done("lost", "200 without choices", raw[:200].decode("latin-1"))
                    return done("ok")
                return await _read_stream(response, done, on_first_chunk)
    except TimeoutError:
        return done("lost", "hang past timeout", f"no complete answer within {timeout_s:g}s")
    except httpx.ConnectError as e:
        return done("refused", "connect refused", str(e))
    except httpx.HTTPError as e:
        # The connection broke with no (or half an) answer: nothing told the client why.
        return done("lost", f"cut: {type(e).__name__}", str(e))


async def _read_stream(
    response: httpx.Response, done: Callable[..., Outcome], on_first_chunk: asyncio.Event | None
) -> Outcome:
    events = 0
    async for line in sse_lines(response):
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return done("ok") if events else done("lost", "stream without tokens")
        events += 1
        if on_first_chunk is not None:
            on_first_chunk.set()
        try:
            event = json.loads(data)
        except ValueError:
            return done("lost", "stream event not json", data[:500])
        if isinstance(event, dict) and "error" in event:
            typed = _typed(200, json.dumps(event).encode())
            if typed is None:
                return done("lost", "stream error without message", data[:200])
            return done("error", "stream " + typed[0].split(" ", 1)[1], typed[1])
    return done("lost", "stream cut without an error event")


@dataclass
class Load:
    """Round-robin mixed traffic over ``targets``; bounded by ``count`` and ``deadline_s``."""

    targets: list[Target]
    count: int
    concurrency: int = 4
    deadline_s: float = 120.0
    timeout_s: float = 120.0
    max_tokens: int = 16
    stream_every: int = 2  # every n-th request streams
    pause_s: float = 0.0  # per worker, between requests
    refused_pause_s: float = 0.5

    async def run(self, tally: Tally, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        end = time.monotonic() + self.deadline_s
        counter = iter(range(self.count))
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        async with httpx.AsyncClient(limits=limits, timeout=self.timeout_s) as client:

            async def worker() -> None:
                for i in counter:
                    target = self.targets[i % len(self.targets)]
                    stream = i % self.stream_every == 0
                    # A refused connection (the platform is down) is tried again after a pause:
                    # nothing was accepted, so it does not use up the count; the deadline bounds it.
                    while not stop.is_set() and time.monotonic() < end:
                        outcome = await call(
                            client,
                            target,
                            stream=stream,
                            max_tokens=self.max_tokens,
                            timeout_s=self.timeout_s,
                            i=i,
                        )
                        tally.add(outcome)
                        if outcome.result != "refused":
                            break
                        await asyncio.sleep(self.refused_pause_s)
                    if stop.is_set() or time.monotonic() > end:
                        return
                    if self.pause_s:
                        await asyncio.sleep(self.pause_s)

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
