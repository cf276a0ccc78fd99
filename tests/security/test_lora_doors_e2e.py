"""Issue 23's high finding, end to end on real vLLM (CPU): with a LoRA revision ready, a client
cannot replace, delete or add an adapter, nor reach ``/invocations`` or the replica's operator
routes, through the activator **or** straight at the replica's port; the declared adapters keep
answering their users, loaded by the platform with its credential."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness.platform import Platform
from runtime.tinyadapter import make_tiny_adapter

pytestmark = pytest.mark.e2e

MANIFEST = Path(__file__).resolve().parents[1] / "data" / "tiny-lora-e2e.yaml"
SERVICE = "tiny-lora-e2e"


def _manifest(tmp_path: Path) -> Path:
    """The e2e LoRA manifest, kept up (one replica) with adapters that do not idle out."""
    doc = yaml.safe_load(MANIFEST.read_text())
    notes = doc["spec"]["template"]["metadata"]["annotations"]
    notes["autoscaling.knative.dev/min-scale"] = "1"
    notes["autoscaling.knative.dev/initial-scale"] = "1"
    notes["torpor.dev/lora-idle-window"] = "10m"
    out = tmp_path / "lora.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _complete(c: httpx.Client, base: str, model: str) -> httpx.Response:
    return c.post(f"{base}/v1/completions", json={
        "model": model, "prompt": "Hello", "max_tokens": 8, "temperature": 0})


def _adapters(platform: Platform) -> dict[str, list[tuple[str, str | None]]]:
    out: dict[str, list[tuple[str, str | None]]] = {}
    for a in platform.revision(SERVICE)["adapters"]:
        out.setdefault(a["name"], []).append((a["state"], a["replica_id"]))
    return out


def test_adapter_and_operator_routes_are_refused_at_both_doors(
    platform: Platform, tmp_path: Path
) -> None:
    make_tiny_adapter(platform.home / "models" / "tiny-sql", seed=1)
    make_tiny_adapter(platform.home / "models" / "tiny-poet", seed=2)
    evil = make_tiny_adapter(tmp_path / "evil", seed=9)
    platform.cli("deploy", "-f", str(_manifest(tmp_path)))
    platform.wait_for(SERVICE, desired=1, ready=1, timeout_s=240)
    [replica] = platform.revision(SERVICE)["replica_urls"]
    service = f"{platform.url}/default/{SERVICE}"

    with httpx.Client(timeout=300) as c:
        before = _complete(c, service, "e2e-sql")
        assert before.status_code == 200, before.text
        _wait(lambda: _adapters(platform)["e2e-sql"][0][0] == "loaded", 30, "e2e-sql loaded")

        attacks: list[tuple[str, str, Any]] = [
            ("DELETE", "/adapters/e2e-sql", None),
            ("POST", "/adapters", {"name": "e2e-sql", "src": str(evil)}),
            ("POST", "/adapters", {"name": "evil", "src": str(evil)}),
            ("POST", "/v1/load_lora_adapter", {"lora_name": "e2e-sql", "lora_path": str(evil)}),
            ("POST", "/v1/load_lora_adapter", {"lora_name": "evil", "lora_path": str(evil)}),
            ("POST", "/v1/unload_lora_adapter", {"lora_name": "e2e-sql"}),
            ("POST", "/invocations", {"prompt": "Hello", "max_tokens": 8}),
            ("GET", "/metrics", None),
            ("GET", "/load", None),
            ("GET", "/version", None),
            ("GET", "/docs", None),
            ("GET", "/openapi.json", None),
        ]
        seen: dict[tuple[str, str, str], tuple[int, str]] = {}
        for door, base in (("activator", service), ("replica", replica)):
            for method, path, body in attacks:
                for guess, headers in enumerate(({}, {"X-Torpor-Platform-Token": "guess"})):
                    try:
                        r = c.request(method, base + path, json=body, headers=headers)
                    except httpx.TransportError as e:
                        seen[(door, method, path + f" #{guess}")] = (0, repr(e))
                        continue
                    code = r.json()["error"]["code"] if r.status_code == 403 else r.text[:200]
                    seen[(door, method, path + f" #{guess}")] = (r.status_code, code)
        refused = {k: v for k, v in seen.items() if v != (403, "platform_endpoint")}
        assert refused == {}, refused

        # The declared adapters still answer their users, with their own weights.
        after = _complete(c, service, "e2e-sql")
        assert after.status_code == 200, after.text
        assert after.json()["choices"][0]["text"] == before.json()["choices"][0]["text"]
        poet = _complete(c, service, "e2e-poet")  # loaded now, by the platform's credential
        assert poet.status_code == 200, poet.text
        assert _complete(c, service, "evil").status_code == 404
        # The replica holds exactly what was placed.
        models = c.get(f"{replica}/v1/models").json()
        held = {m["id"] for m in models["data"] if m.get("parent")}
        assert held == {"e2e-sql", "e2e-poet"}
        assert c.get(f"{replica}/health").status_code == 200
