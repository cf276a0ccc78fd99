"""The loop's LoRA placement with a fake ``LoraClient``: what replicas hold is learned from them
(restart, new leader), and a failed load is published and not retried until asked for again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from autoscaler.loop import Autoscaler, LoopConfig
from tests.autoscaler.fakes import FakeActuator, FakeScraper, eventually, revision, service
from torpor.bus import MemoryBus, RevisionEndpoints
from torpor.spec import AdapterSpec, LoraSpec, RevisionSpec

KEY = "default/chat-00001"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeLora:
    """Adapters per replica URL; ``fail`` makes loads of a name fail, ``unreadable`` the list."""

    def __init__(self) -> None:
        self.held: dict[str, set[str]] = {}
        self.calls: list[tuple[str, str, str]] = []  # (op, url, name)
        self.fail: dict[str, str] = {}  # adapter -> error
        self.unreadable: set[str] = set()

    async def load(self, url: str, name: str, source: str) -> None:
        self.calls.append(("load", url, name))
        if name in self.fail:
            raise RuntimeError(self.fail[name])
        self.held.setdefault(url, set()).add(name)

    async def unload(self, url: str, name: str) -> None:
        self.calls.append(("unload", url, name))
        self.held.get(url, set()).discard(name)

    async def loaded(self, url: str) -> frozenset[str]:
        self.calls.append(("list", url, ""))
        if url in self.unreadable:
            raise ConnectionError("refused")
        return frozenset(self.held.get(url, ()))

    def ops(self, op: str) -> list[tuple[str, str]]:
        return [(url, name) for o, url, name in self.calls if o == op]


def lora_revision(*names: str, idle_window_s: float = 60.0) -> RevisionSpec:
    lora = LoraSpec(
        tuple(AdapterSpec(n, f"/models/{n}") for n in names), idle_window_s, max_loras=2
    )
    return replace(revision(min_scale=1, initial_scale=1), lora=lora)


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    b = MemoryBus()
    yield b
    await b.aclose()


async def ready_replica(actuator: FakeActuator, rev: RevisionSpec) -> str:
    await actuator.start(rev, 1)
    r = actuator.make_ready(rev.ref.key)
    assert r.url is not None
    return r.url


def scaler(
    bus: MemoryBus, actuator: FakeActuator, lora: FakeLora, clock: FakeClock
) -> Autoscaler:
    return Autoscaler(
        bus,
        actuator,
        scrape=FakeScraper(),
        config=LoopConfig(tick_s=0.01, drain_quiet_s=0.0),
        clock=clock,
        lora=lora,
    )


async def published(bus: MemoryBus) -> RevisionEndpoints | None:
    return (await bus.snapshot()).endpoints.get(KEY)


async def test_a_restarted_autoscaler_learns_held_adapters_and_unloads_them(
    bus: MemoryBus,
) -> None:
    actuator, lora, clock = FakeActuator(), FakeLora(), FakeClock()
    rev = lora_revision("x", "y", idle_window_s=60.0)
    url = await ready_replica(actuator, rev)
    # Loaded by the previous autoscaler: "x" still declared, "gone" dropped from the spec.
    lora.held[url] = {"x", "gone"}
    await bus.publish_services([service(rev)])
    async with scaler(bus, actuator, lora, clock).running():
        await eventually(lambda: (url, "gone") in lora.ops("unload"))

        async def lists_x() -> bool:
            e = await published(bus)
            return e is not None and [x.adapters for x in e.endpoints] == [("x",)]

        await eventually(lists_x)  # the first publication already lists what it holds
        assert (url, "x") not in lora.ops("unload")  # an idle window from when it was found
        clock.now += 61
        await eventually(lambda: (url, "x") in lora.ops("unload"))
    assert lora.held[url] == set()
    assert lora.ops("load") == []


async def test_an_unreadable_replica_is_asked_again_and_never_crashes_the_loop(
    bus: MemoryBus,
) -> None:
    actuator, lora, clock = FakeActuator(), FakeLora(), FakeClock()
    rev = lora_revision("x")
    url = await ready_replica(actuator, rev)
    lora.held[url] = {"gone"}
    lora.unreadable.add(url)
    await bus.publish_services([service(rev)])
    a = scaler(bus, actuator, lora, clock)
    async with a.running():
        await eventually(lambda: len(lora.ops("list")) >= 3)
        await bus.poke(KEY, "x")
        await eventually(lambda: len(lora.ops("list")) >= 6)
        assert lora.ops("load") == [] and lora.ops("unload") == []  # unknown: left alone
        lora.unreadable.clear()
        await eventually(lambda: (url, "gone") in lora.ops("unload"))
        await eventually(lambda: (url, "x") in lora.ops("load"))
        listed = len(lora.ops("list"))
        await eventually(lambda: a.statuses()[0].adapters[0].state == "loaded")
    assert len(lora.ops("list")) == listed  # known now: not asked again


async def test_a_failed_load_is_published_and_retried_only_when_asked_again(
    bus: MemoryBus,
) -> None:
    actuator, lora, clock = FakeActuator(), FakeLora(), FakeClock()
    rev = lora_revision("x")
    url = await ready_replica(actuator, rev)
    lora.fail["x"] = "400 No adapter found for /models/x\ntraceback..."
    await bus.publish_services([service(rev)])
    a = scaler(bus, actuator, lora, clock)
    async with a.running():
        await eventually(lambda: len(lora.ops("list")) == 1)
        await bus.poke(KEY, "x")

        async def failure_published() -> bool:
            e = await published(bus)
            return e is not None and [f.adapter for f in e.adapter_failures] == ["x"]

        await eventually(failure_published)
        e = await published(bus)
        assert e is not None and e.adapter_failures[0].reason.startswith("400 No adapter")
        assert a.statuses()[0].adapters[0].state == "failed"
        # Not tried again on every tick (a dozen or more pass here).
        await asyncio.sleep(0.2)
        assert lora.ops("load") == [(url, "x")]
        # A request after the failure pokes: that is the retry, and it works now.
        del lora.fail["x"]
        clock.now += 1
        await bus.poke(KEY, "x")
        await eventually(lambda: lora.ops("load") == [(url, "x"), (url, "x")])

        async def cleared() -> bool:
            e = await published(bus)
            return e is not None and e.adapter_failures == () and e.endpoints[0].adapters == ("x",)

        await eventually(cleared)
        assert a.statuses()[0].adapters[0].state == "loaded"


async def test_a_poke_whose_requests_left_is_forgotten_after_the_idle_window(
    bus: MemoryBus,
) -> None:
    actuator, lora, clock = FakeActuator(), FakeLora(), FakeClock()
    rev = lora_revision("x", idle_window_s=60.0)
    url = await ready_replica(actuator, rev)
    lora.unreadable.add(url)  # nothing can be placed for now
    await bus.publish_services([service(rev)])
    a = scaler(bus, actuator, lora, clock)
    async with a.running():
        await bus.poke(KEY, "x")
        await eventually(lambda: len(lora.ops("list")) >= 3)
        # Its requests left (no activator reports any); an idle window passes.
        clock.now += 61
        await eventually(lambda: len(lora.ops("list")) >= 6)
        lora.unreadable.clear()
        await eventually(lambda: a.statuses()[0].adapters[0].state == "idle")
        await asyncio.sleep(0.2)  # a dozen ticks or more
    assert lora.ops("load") == []
