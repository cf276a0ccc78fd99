"""The activator's release path at zero: endpoint published -> first held request at the replica.

One process: a replica (``upstream_app``), an activator on a ``MemoryBus`` whose revision has no
endpoint, so a request is held; the endpoint is then published and the time until the held
request reaches the replica is one sample.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from harness.overhead.targets import NAMESPACE, REVISION, SERVICE, bench_service, upstream_app
from harness.ports import free_port


def measure_release(samples: int) -> dict[str, float]:
    """Endpoint published -> first held request arrives at the replica (ms), in one process."""
    import uvicorn
    import uvloop

    from activator.app import ActivatorConfig, build_activator
    from torpor.bus.base import Endpoint, RevisionEndpoints
    from torpor.bus.memory import MemoryBus

    async def run() -> list[float]:
        arrived: asyncio.Future[float] | None = None

        async def replica(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            if arrived is not None and not arrived.done():
                arrived.set_result(time.perf_counter())
            await upstream_app(scope, receive, send)

        async def serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
            port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    host="127.0.0.1",
                    port=port,
                    loop="none",
                    http="httptools",
                    lifespan="off",
                    access_log=False,
                    log_level="warning",
                )
            )
            task = asyncio.create_task(server.serve())
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                await asyncio.sleep(0.01)
            return server, task, port

        import httpx

        bus = MemoryBus()
        await bus.publish_services([bench_service()])
        activator = build_activator(bus, ActivatorConfig(activator_id="bench"))
        key = f"{NAMESPACE}/{REVISION}"
        up_server, up_task, up_port = await serve(replica)
        results: list[float] = []
        async with activator.running(), httpx.AsyncClient() as client:
            act_server, act_task, act_port = await serve(activator.app)
            for _ in range(samples):
                await bus.publish_endpoints(RevisionEndpoints(key, ()))
                arrived = asyncio.get_running_loop().create_future()
                call = asyncio.create_task(
                    client.get(f"http://127.0.0.1:{act_port}/{NAMESPACE}/{SERVICE}/json")
                )
                while not any(s.queued for s in activator.stats()):  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                published = time.perf_counter()
                await bus.publish_endpoints(
                    RevisionEndpoints(key, (Endpoint("r0", f"http://127.0.0.1:{up_port}"),))
                )
                results.append((await arrived - published) * 1e3)
                (await call).raise_for_status()
            act_server.should_exit = True
            await act_task
        up_server.should_exit = True
        await up_task
        return results

    values = uvloop.run(run())
    values.sort()
    return {
        "samples": len(values),
        "p50_ms": statistics.median(values),
        "p99_ms": values[min(len(values) - 1, int(len(values) * 0.99))],
        "max_ms": values[-1],
    }
