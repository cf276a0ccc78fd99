"""The control plane enforces the platform's replica caps (issue 13 item 8): per revision when a
manifest is parsed, in total across services when it is applied; a refusal changes nothing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from autoscaler.loop import Autoscaler
from embedded.cli import build_parser
from embedded.controlplane import ControlPlane
from embedded.state import StateDir
from tests.autoscaler.fakes import FakeActuator
from torpor.bus import MemoryBus
from torpor.manifest import ManifestError
from torpor.manifest.limits import (
    DEFAULT_MAX_REPLICAS_TOTAL,
    DEFAULT_MAX_SCALE_PER_REVISION,
    ScaleLimits,
)

REPO = Path(__file__).resolve().parents[2]
TINY_CHAT = (REPO / "manifests/examples/tiny-chat.yaml").read_text()
MIN_SCALE = 'spec.template.metadata.annotations["autoscaling.knative.dev/min-scale"]'


def manifest(name: str, min_scale: int) -> str:
    text = TINY_CHAT.replace("name: tiny-chat", f"name: {name}", 1)
    return text.replace('min-scale: "0"', f'min-scale: "{min_scale}"')


async def plane(tmp_path: Path, limits: ScaleLimits) -> tuple[ControlPlane, MemoryBus]:
    bus = MemoryBus()
    control = ControlPlane(bus, StateDir(tmp_path).ensure(), domain="example.com", limits=limits)
    await control.start()
    return control, bus


async def test_a_deploy_past_the_total_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    control, bus = await plane(tmp_path, ScaleLimits(per_revision=4, total=6))
    await control.apply(manifest("a", 4))
    before = control.services()
    with pytest.raises(ManifestError) as info:
        await control.apply(manifest("b", 3), source="b.yaml")
    assert info.value.field == MIN_SCALE
    assert str(info.value).startswith("b.yaml: ")
    assert "total of 6" in info.value.reason
    assert control.services() == before
    assert StateDir(tmp_path).load_services() == before
    assert (await bus.snapshot()).services == before
    await control.apply(manifest("b", 2))  # exactly at the total


async def test_the_per_revision_cap_is_the_configured_one(tmp_path: Path) -> None:
    control, _ = await plane(tmp_path, ScaleLimits(per_revision=2, total=4))
    with pytest.raises(ManifestError) as info:
        await control.apply(manifest("a", 3))
    assert info.value.field == MIN_SCALE
    assert control.services() == ()
    applied = await control.apply(manifest("a", 2))
    assert applied.service.latest_revision.autoscaling.max_scale == 2  # unbounded -> the cap


async def test_what_was_deployed_under_a_higher_cap_is_clamped_on_restart(tmp_path: Path) -> None:
    first, _ = await plane(tmp_path, ScaleLimits(per_revision=8, total=16))
    await first.apply(manifest("a", 8))
    restarted, bus = await plane(tmp_path, ScaleLimits(per_revision=3, total=16))
    [service] = restarted.services()
    a = service.latest_revision.autoscaling
    assert (a.min_scale, a.max_scale) == (3, 3)
    assert (await bus.snapshot()).services == restarted.services()
    [stored] = StateDir(tmp_path).load_services()
    assert replace(stored.latest_revision.autoscaling, min_scale=3, max_scale=3) == a


def test_torpor_up_takes_the_caps_with_documented_defaults() -> None:
    args = build_parser().parse_args(["up"])
    assert (args.max_scale_per_revision, args.max_replicas) == (
        DEFAULT_MAX_SCALE_PER_REVISION,
        DEFAULT_MAX_REPLICAS_TOTAL,
    )
    args = build_parser().parse_args(["up", "--max-scale-per-revision", "2", "--max-replicas", "5"])
    assert (args.max_scale_per_revision, args.max_replicas) == (2, 5)


def test_torpor_up_refuses_inconsistent_caps_before_starting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from embedded.cli import main

    assert main(["up", "--max-scale-per-revision", "8", "--max-replicas", "4"]) == 2
    assert "at least the per-revision cap" in capsys.readouterr().err


LORA = (REPO / "manifests/examples/tiny-lora.yaml").read_text()
LORA_FIELD = 'spec.template.metadata.annotations["torpor.dev/lora-adapters"]'


async def test_adapters_are_checked_on_disk_at_deploy_and_a_refusal_changes_nothing(
    tmp_path: Path,
) -> None:
    from runtime.tinyadapter import make_tiny_adapter

    models = tmp_path / "models"
    bus = MemoryBus()
    control = ControlPlane(
        bus,
        StateDir(tmp_path / "home").ensure(),
        domain="example.com",
        local_path=lambda p: str(models) + p.removeprefix("/models"),
    )
    await control.start()
    make_tiny_adapter(models / "tiny-sql", seed=1, rank=8)
    with pytest.raises(ManifestError, match=r"'tiny-poet'.*no such directory") as info:
        await control.apply(LORA)
    assert info.value.field == LORA_FIELD
    assert control.services() == ()
    make_tiny_adapter(models / "tiny-poet", seed=2, rank=16)  # above --max-lora-rank=8
    with pytest.raises(ManifestError, match=r"rank 16 is above --max-lora-rank 8"):
        await control.apply(LORA)
    assert control.services() == ()
    (models / "tiny-poet" / ".torpor-adapter-complete").unlink()
    make_tiny_adapter(models / "tiny-poet", seed=2, rank=8)
    applied = await control.apply(LORA)
    lora = applied.service.latest_revision.lora
    assert lora is not None and [a.name for a in lora.adapters] == ["tiny-sql", "tiny-poet"]
    # Another service may not serve a model named like one of these adapters.
    clash = TINY_CHAT.replace("--served-model-name=tiny-chat", "--served-model-name=tiny-sql")
    with pytest.raises(ManifestError, match="already an adapter of service default/tiny-lora"):
        await control.apply(clash)
    assert [s.name for s in control.services()] == ["tiny-lora"]


async def test_a_restart_with_revisions_at_zero_cold_starts_none_of_them(tmp_path: Path) -> None:
    """Issue 22, fix 2: three services at the default initial scale (1). Deployed, the loop
    starts one replica each; after a restart of ``torpor up`` (the same state directory, a fresh
    loop) they come back at zero, as the README says, and a later deploy's new revision still
    starts at its initial scale."""
    default_scale = TINY_CHAT.replace('autoscaling.knative.dev/initial-scale: "0"', "")
    names = ("a", "b", "c")

    async def starts(bus: MemoryBus) -> list[str]:
        actuator = FakeActuator()
        async with Autoscaler(bus, actuator, tick_s=0.02).running():
            await asyncio.sleep(0.5)
        return sorted(rid for call, rid in actuator.calls if call == "start")

    first, bus = await plane(tmp_path, ScaleLimits())
    for name in names:
        await first.apply(default_scale.replace("name: tiny-chat", f"name: {name}", 1))
    assert len(await starts(bus)) == 3  # a first deploy reaches its initial scale

    restarted, bus = await plane(tmp_path, ScaleLimits())
    assert await starts(bus) == []
    # The state directory keeps the manifest's own initial scale.
    assert all(s.latest_revision.autoscaling.initial_scale == 1 for s in restarted.services())
    newer = default_scale.replace("name: tiny-chat", "name: a", 1).replace("512", "1024")
    await restarted.apply(newer)
    assert await starts(bus) == ["a-00002-r1"]
