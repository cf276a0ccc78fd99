"""LoRA adapters end to end with real vLLM (CPU): two adapters on one base, each called by its
own model name with the official client; loaded on demand on the one warm replica, unloaded
after their idle window, the base back to zero after (issue 16)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from harness.platform import Platform
from runtime.tinyadapter import make_tiny_adapter

pytestmark = pytest.mark.e2e

MANIFEST = Path(__file__).resolve().parents[1] / "data" / "tiny-lora-e2e.yaml"
SERVICE = "tiny-lora-e2e"


def _adapters(platform: Platform) -> dict[str, list[tuple[str, str | None]]]:
    out: dict[str, list[tuple[str, str | None]]] = {}
    for a in platform.revision(SERVICE)["adapters"]:
        out.setdefault(a["name"], []).append((a["state"], a["replica_id"]))
    return out


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_adapters_load_on_demand_on_one_replica_and_go_idle(platform: Platform) -> None:
    make_tiny_adapter(platform.home / "models" / "tiny-sql", seed=1)
    make_tiny_adapter(platform.home / "models" / "tiny-poet", seed=2)
    platform.cli("deploy", "-f", str(MANIFEST))

    root = openai.OpenAI(base_url=f"{platform.url}/v1", api_key="unused", max_retries=0,
                         timeout=300)
    listed = {m.id: (m.model_extra or {}).get("parent") for m in root.models.list()}
    assert listed == {SERVICE: None, "e2e-sql": SERVICE, "e2e-poet": SERVICE}
    assert platform.revision(SERVICE)["ready_replicas"] == 0  # listing woke nothing
    assert _adapters(platform) == {"e2e-sql": [("idle", None)], "e2e-poet": [("idle", None)]}

    # Adapter A by its model name at the root URL, the base at zero: cold start, then the load.
    a = root.completions.create(model="e2e-sql", prompt="Hello", max_tokens=8, temperature=0)
    assert a.model == "e2e-sql" and a.choices[0].text
    up = platform.revision(SERVICE)
    assert up["ready_replicas"] == 1
    [(state, replica)] = _adapters(platform)["e2e-sql"]
    assert state == "loaded" and replica

    # Adapter B through the per-model URL: loaded on the same warm replica, no new replica.
    per_model = openai.OpenAI(base_url=f"{platform.url}/default/{SERVICE}/v1", api_key="unused",
                              max_retries=0, timeout=300)
    b = per_model.completions.create(model="e2e-poet", prompt="Hello", max_tokens=8,
                                     temperature=0)
    assert b.model == "e2e-poet" and b.choices[0].text
    base = per_model.completions.create(model=SERVICE, prompt="Hello", max_tokens=8,
                                        temperature=0)
    # Different (random, nonzero) adapters answer differently.
    assert len({a.choices[0].text, b.choices[0].text, base.choices[0].text}) >= 2
    now = platform.revision(SERVICE)
    assert (now["desired_replicas"], now["ready_replicas"], now["starting_replicas"]) == (1, 1, 0)
    assert _adapters(platform)["e2e-poet"] == [("loaded", replica)]
    # Recorded once the runtime's start-up line is read, up to 3 s after ready.
    _wait(lambda: platform.revision(SERVICE)["last_cold_start"] is not None, 30, "cold start")
    assert platform.revision(SERVICE)["last_cold_start"]["replica_id"] == replica

    # A's idle window (3 s) passes: unloaded, the base still up.
    _wait(lambda: _adapters(platform)["e2e-sql"] == [("idle", None)], 30, "e2e-sql unloaded")
    # Then everything idle: the base goes back to zero (window 6 s + grace 2 s).
    platform.wait_for(SERVICE, desired=0, ready=0, timeout_s=60)
    assert _adapters(platform) == {"e2e-sql": [("idle", None)], "e2e-poet": [("idle", None)]}
