"""How long one hop over the bus takes: publish on one handle, event out of another.

Two messages matter on the request path: a poke (first waiter at zero -> autoscaler) and an
endpoints update (ready replica -> every activator, which then releases its held requests). Each is
measured over ``MemoryBus`` (the embedded platform) and ``RedisBus`` against a real
``redis-server`` started here on a free loopback port (one publisher bus, one subscriber bus,
separate connections, as two processes would have), plus a ``snapshot()`` round trip. Sequential
round trips, so these are latencies, not throughput.

Run: ``.venv/bin/python benchmarks/bus_latency.py [--n 2000]`` (writes
``benchmarks/results/bus_latency.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from harness.redis_server import RedisServer, find_redis_server
from torpor.bus import (
    ActivatorStats,
    Bus,
    BusEvent,
    Endpoint,
    MemoryBus,
    RedisBus,
    RevisionEndpoints,
)

RESULTS = Path(__file__).resolve().parent / "results"
REV = "default/chat-00001"


async def _round_trips(
    n: int, send: Callable[[int], Awaitable[None]], events: AsyncIterator[BusEvent]
) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await send(i)
        await anext(events)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def _snapshots(n: int, bus: Bus) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await bus.snapshot()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 4),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 4),
        "max_ms": round(ordered[-1], 4),
    }


async def _measure(kind: str, publisher: Bus, subscriber: Bus, n: int) -> dict[str, object]:
    events = subscriber.events()
    ready = RevisionEndpoints(
        REV, tuple(Endpoint(f"r{i}", f"http://10.0.0.{i}:8080") for i in range(4))
    )
    # A few activators' stats and a handful of revisions, so snapshot() reads something real.
    await publisher.publish_stats(
        [
            ActivatorStats(f"a{a}", f"default/m{r}-00001", 1, 2, time.time())
            for a in range(3)
            for r in range(8)
        ]
    )

    async def poke(_: int) -> None:
        await publisher.poke(REV)

    async def publish(_: int) -> None:
        await publisher.publish_endpoints(ready)

    await _round_trips(50, poke, events)  # warm up connections and script caches
    return {
        "bus": kind,
        "poke": _summary(await _round_trips(n, poke, events)),
        "endpoints": _summary(await _round_trips(n, publish, events)),
        "snapshot": _summary(await _snapshots(n, subscriber)),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="round trips per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    args = parser.parse_args()
    rows = []

    memory = MemoryBus()
    rows.append(await _measure("memory", memory, memory, args.n))
    await memory.aclose()

    binary = find_redis_server()
    if binary is None:
        sys.exit("redis-server not found (apt-get install -y redis-server)")
    server = RedisServer(binary, Path(tempfile.mkdtemp(prefix="bus-bench-")))
    server.start()
    try:
        publisher = await RedisBus.connect(server.url)
        subscriber = await RedisBus.connect(server.url)
        try:
            rows.append(await _measure("redis", publisher, subscriber, args.n))
        finally:
            await publisher.aclose()
            await subscriber.aclose()
    finally:
        server.stop()

    result = {
        "n": args.n,
        "machine": platform.platform(),
        "python": platform.python_version(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bus_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Bus latency: publish on one handle to the event on another",
        "",
        f"{args.n} sequential round trips each; {result['machine']}, Python {result['python']}.",
        "",
        "| bus | poke p50 / p99 (ms) | endpoints p50 / p99 (ms) | snapshot p50 / p99 (ms) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            f"{row[k]['p50_ms']:.3f} / {row[k]['p99_ms']:.3f}"  # type: ignore[index]
            for k in ("poke", "endpoints", "snapshot")
        ]
        lines.append(f"| {row['bus']} | " + " | ".join(cells) + " |")
    (args.out / "bus_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
