"""The activator over real HTTP: uvicorn in front, uvicorn replicas behind, MemoryBus between."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from activator.app import ActivatorConfig
from tests.activator.conftest import (
    ActivatorFactory,
    Running,
    Upstream,
    endpoints,
    eventually,
    free_port,
    revision,
    serve,
    service,
)
from torpor.bus.base import EndpointsChanged, Poked, RevisionEndpoints
from torpor.spec import TrafficTarget

KEY = "default/chat-00001"
CHAT = service()


@asynccontextmanager
async def client(running: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as c:
        yield c


def queued(running: Running, key: str = KEY) -> int:
    return next((s.queued for s in running.activator.stats() if s.revision == key), 0)


async def test_path_form_forwards_with_prefix_stripped(running_activator: ActivatorFactory) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, running_activator((CHAT,)) as running:
        await running.bus.publish_endpoints(endpoints(KEY, up))
        async with client(running) as c:
            r = await c.post(
                "/default/chat/v1/completions?x=1",
                json={"prompt": "hi"},
                headers={"Connection": "keep-alive, x-secret", "x-secret": "1", "x-keep": "2"},
            )
    assert r.status_code == 200
    assert r.json() == {
        "replica": "replica",
        "method": "POST",
        "path": "/v1/completions",
        "query": "x=1",
        "body": '{"prompt":"hi"}',
    }
    seen = upstream.seen[0].headers
    assert "x-secret" not in seen  # named by Connection: hop-by-hop
    assert seen["x-keep"] == "2"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == running.url.removeprefix("http://")


async def test_host_form_and_tag_url(running_activator: ActivatorFactory) -> None:
    r1, r2 = revision("chat-00001"), revision("chat-00002")
    spec = service(
        revisions=(r1, r2),
        traffic=(TrafficTarget("chat-00001", 100), TrafficTarget("chat-00002", 0, tag="beta")),
    )
    one, two = Upstream("one"), Upstream("two")
    async with (
        serve(one) as u1,
        serve(two) as u2,
        running_activator((spec,), domain="models.test") as running,
    ):
        await running.bus.publish_endpoints(endpoints(r1.ref.key, u1))
        await running.bus.publish_endpoints(endpoints(r2.ref.key, u2))
        async with client(running) as c:
            plain = await c.get("/score", headers={"Host": "chat.default.models.test:8080"})
            tagged = await c.get("/score", headers={"Host": "beta-chat.default.models.test"})
            by_path = await c.get("/default/beta-chat/v1/responses/x")
            missing = await c.get("/score", headers={"Host": "gamma-chat.default.models.test"})
    assert plain.json()["replica"] == "one"
    assert tagged.json()["replica"] == "two"
    assert by_path.json()["replica"] == "two"
    assert missing.status_code == 404
    assert "gamma-chat" in missing.json()["error"]["message"]


async def test_held_at_zero_pokes_then_released_when_a_replica_is_ready(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, running_activator((CHAT,)) as running:
        pokes: list[str] = []

        async def watch_pokes() -> None:
            async for event in running.bus.events():
                if isinstance(event, Poked):
                    pokes.append(event.revision)

        watcher = asyncio.create_task(watch_pokes())
        await asyncio.sleep(0)
        async with client(running) as c:
            calls = [
                asyncio.create_task(c.post("/default/chat/v1/completions", content=f"{i}"))
                for i in range(3)
            ]
            await eventually(lambda: queued(running) == 3 and bool(pokes))
            assert pokes == [KEY]
            assert upstream.seen == []
            await running.bus.publish_endpoints(endpoints(KEY, up))
            answers = await asyncio.gather(*calls)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert sorted(s.body for s in upstream.seen) == [b"0", b"1", b"2"]


async def test_queue_full_is_503_with_retry_after(running_activator: ActivatorFactory) -> None:
    spec = service(revisions=(revision("chat-00001", queue_depth=1),))
    async with running_activator((spec,)) as running, client(running) as c:
        held = asyncio.create_task(c.get("/default/chat/v1/responses/x"))
        await eventually(lambda: queued(running) == 1)
        r = await c.get("/default/chat/v1/responses/x")
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "queue_full"


async def test_waiting_past_the_revision_timeout_is_504(
    running_activator: ActivatorFactory,
) -> None:
    spec = service(revisions=(revision("chat-00001", timeout_s=0.05),))
    async with running_activator((spec,)) as running, client(running) as c:
        r = await c.get("/default/chat/v1/responses/x")
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "server_error"
    assert queued(running) == 0


async def test_failed_start_answers_waiters_with_the_runtime_error(
    running_activator: ActivatorFactory,
) -> None:
    async with running_activator((CHAT,)) as running, client(running) as c:
        held = asyncio.create_task(c.get("/default/chat/v1/responses/x"))
        await eventually(lambda: queued(running) == 1)
        await running.bus.publish_endpoints(
            RevisionEndpoints(KEY, failure="ValueError: model /models/tiny not found")
        )
        r = await held
    assert r.status_code == 503
    assert "model /models/tiny not found" in r.json()["error"]["message"]


async def test_disconnect_while_waiting_is_never_forwarded(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, running_activator((CHAT,)) as running:
        async with client(running) as c:
            held = asyncio.create_task(c.get("/default/chat/v1/responses/x"))
            await eventually(lambda: queued(running) == 1)
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)
        await eventually(lambda: queued(running) == 0)
        await running.bus.publish_endpoints(endpoints(KEY, up))
        async with client(running) as c:
            r = await c.get("/default/chat/v1/responses/after")
    assert r.status_code == 200
    assert [s.path for s in upstream.seen] == ["/v1/responses/after"]


async def test_streaming_passes_each_event_through_as_it_arrives(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, running_activator((CHAT,)) as running:
        await running.bus.publish_endpoints(endpoints(KEY, up))
        async with (
            client(running) as c,
            c.stream("GET", "/default/chat/v1/responses/stream?n=3") as r,
        ):
            lines = r.aiter_lines()
            first = await anext(lines)
            # The upstream sends the rest only after this point: a buffering proxy would hang here.
            upstream.gate.set()
            rest = [line async for line in lines if line]
    assert r.headers["content-type"] == "text/event-stream"
    assert json.loads(first.removeprefix("data: ")) == {"token": 0}
    assert rest == ['data: {"token": 1}', 'data: {"token": 2}', "data: [DONE]"]


async def test_disconnect_while_streaming_cancels_the_upstream(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, running_activator((CHAT,)) as running:
        await running.bus.publish_endpoints(endpoints(KEY, up))
        async with client(running) as c:
            async with c.stream("GET", "/default/chat/v1/responses/stream?n=100") as r:
                await anext(r.aiter_bytes())
            # Leaving the block closed the client's connection mid-stream.
            await asyncio.wait_for(upstream.disconnected.wait(), 5)
            await eventually(lambda: running.activator.stats()[0].in_flight == 0)
            metrics = (await c.get("/metrics")).text
    assert 'code="499"' in metrics


async def test_draining_replica_gets_no_new_requests(running_activator: ActivatorFactory) -> None:
    old, new = Upstream("old"), Upstream("new")
    async with (
        serve(old) as u_old,
        serve(new) as u_new,
        running_activator((CHAT,)) as running,
        client(running) as c,
    ):
        await running.bus.publish_endpoints(endpoints(KEY, u_old, u_new, draining=(u_old,)))
        answers = [(await c.get("/default/chat/score")).json()["replica"] for _ in range(10)]
    assert set(answers) == {"new"}
    assert old.seen == []


async def test_connection_refused_is_retried_once_on_another_replica(
    running_activator: ActivatorFactory,
) -> None:
    good = Upstream("good")
    dead = f"http://127.0.0.1:{free_port()}"
    async with serve(good) as up, running_activator((CHAT,)) as running, client(running) as c:
        await running.bus.publish_endpoints(endpoints(KEY, dead, up))
        answers = [await c.post("/default/chat/score", content=b"payload") for _ in range(10)]
        await running.bus.publish_endpoints(endpoints(KEY, dead))
        # The only replica refuses (it died): the retry waits for its replacement.
        alone = asyncio.create_task(c.get("/default/chat/v1/responses/x"))
        await eventually(lambda: queued(running) == 1)
        await running.bus.publish_endpoints(endpoints(KEY, dead, up))  # r1: a new replica
        replaced = await alone
    assert [a.status_code for a in answers] == [200] * 10
    assert all(s.body == b"payload" for s in good.seen[:10])  # the body replayed on retry
    assert replaced.status_code == 200


async def test_container_concurrency_holds_the_excess(running_activator: ActivatorFactory) -> None:
    spec = service(revisions=(revision("chat-00001", container_concurrency=1),))
    upstream = Upstream()
    async with (
        serve(upstream) as up,
        running_activator((spec,)) as running,
        client(running) as c,
    ):
        await running.bus.publish_endpoints(endpoints(KEY, up))
        streaming = c.stream("GET", "/default/chat/v1/responses/stream?n=2")
        r = await streaming.__aenter__()
        chunks = r.aiter_bytes()  # kept: a dropped iterator closes the connection when collected
        await anext(chunks)
        second = asyncio.create_task(c.get("/default/chat/v1/responses/x"))
        await eventually(lambda: queued(running) == 1)
        assert [s.path for s in upstream.seen] == ["/v1/responses/stream"]
        upstream.gate.set()
        assert b"[DONE]" in b"".join([chunk async for chunk in chunks])
        await streaming.__aexit__(None, None, None)
        assert (await second).status_code == 200


async def test_body_over_the_limit_is_413(running_activator: ActivatorFactory) -> None:
    upstream = Upstream()
    async with (
        serve(upstream) as up,
        running_activator((CHAT,), max_body_bytes=1000) as running,
        client(running) as c,
    ):
        await running.bus.publish_endpoints(endpoints(KEY, up))
        declared = await c.post("/default/chat/v1/responses/x", content=b"x" * 1001)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"y" * 400

        chunked = await c.post("/default/chat/v1/responses/x", content=chunks())
        fits = await c.post("/default/chat/v1/responses/x", content=b"z" * 1000)
    assert declared.status_code == 413
    assert chunked.status_code == 413
    assert fits.status_code == 200
    assert [len(s.body) for s in upstream.seen] == [1000]


async def test_stats_are_published_and_metrics_served(running_activator: ActivatorFactory) -> None:
    upstream = Upstream()
    async with (
        serve(upstream) as up,
        running_activator((CHAT,), stats_interval_s=0.01) as running,
        client(running) as c,
    ):
        await running.bus.publish_endpoints(endpoints(KEY, up))
        assert (await c.get("/default/chat/v1/responses/x")).status_code == 200
        assert (await c.get("/default/nope/v1/responses/x")).status_code == 404

        async def published() -> int:
            stats = (await running.bus.snapshot()).stats
            return next((s.requests_total for s in stats if s.revision == KEY), 0)

        async with asyncio.timeout(5):
            while await published() != 1:  # noqa: ASYNC110 - the bus has no stats event
                await asyncio.sleep(0.01)
        health = await c.get("/healthz")
        metrics = (await c.get("/metrics")).text
    assert health.json()["status"] == "ok"
    assert (
        'torpor_activator_requests_total{code="200",namespace="default",revision="chat-00001",'
        'service="chat"} 1.0' in metrics
    )
    assert 'torpor_activator_queue_depth{namespace="default",revision="chat-00001"' in metrics
    assert "torpor_activator_wait_seconds_bucket" in metrics
    assert "torpor_activator_in_flight" in metrics


async def test_services_published_later_become_routable(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, running_activator(()) as running, client(running) as c:
        before = await c.get("/default/chat/v1/responses/x")
        await running.bus.publish_services((CHAT,))
        await running.bus.publish_endpoints(endpoints(KEY, up))
        await eventually(lambda: bool(running.activator.stats()))
        after = await c.get("/default/chat/v1/responses/x")
    assert before.status_code == 404
    assert after.status_code == 200


async def test_an_endpoints_event_lost_on_the_bus_is_picked_up_by_the_resync(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, running_activator((CHAT,), resync_s=0.1) as running:
        fanout = running.bus._fanout  # the seam: drop the next event, as a lost message would be
        emit = fanout.emit
        fanout.emit = lambda event: None  # type: ignore[method-assign]
        await running.bus.publish_endpoints(endpoints(KEY, up))
        fanout.emit = emit  # type: ignore[method-assign]
        async with client(running) as c:
            response = await c.get("/default/chat/score")  # held until the resync, then served
    assert response.status_code == 200


async def test_the_resync_runs_on_its_own_clock_while_events_keep_coming(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, running_activator((CHAT,), resync_s=0.2) as running:
        fanout = running.bus._fanout  # the seam: drop endpoints events, deliver the rest
        emit = fanout.emit
        fanout.emit = lambda event: None if isinstance(event, EndpointsChanged) else emit(event)  # type: ignore[method-assign]
        await running.bus.publish_endpoints(endpoints(KEY, up))

        async def chatter() -> None:  # an event every 50 ms, more often than the resync
            while True:
                await running.bus.publish_services((CHAT,))
                await asyncio.sleep(0.05)

        task = asyncio.create_task(chatter())
        try:
            async with client(running) as c:
                response = await c.get("/default/chat/v1/responses/x")
        finally:
            task.cancel()
            fanout.emit = emit  # type: ignore[method-assign]
    assert response.status_code == 200


async def test_a_resync_that_finds_nothing_new_keeps_the_routing_table(
    running_activator: ActivatorFactory,
) -> None:
    async with running_activator((CHAT,), resync_s=0) as running:
        table = running.activator._table  # the seam: rebuilding it is what costs
        await running.activator.resync()
        assert running.activator._table is table


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="activator_id"):
        ActivatorConfig(activator_id="")
    with pytest.raises(ValueError, match="resync_s"):
        ActivatorConfig(activator_id="a", resync_s=-1)
