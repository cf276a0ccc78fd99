"""``torpor demo``: the whole tour on the embedded platform, narrated.

Starts ``torpor up`` as a child process, deploys a manifest, shows the revision at zero, calls the
model at its URL (the cold start is timed and its progress shown), calls it again warm, waits for
the revision to scale back to zero, and stops the platform.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from embedded.child import spawn_up, stop_up, wait_up
from embedded.client import ControlClient
from embedded.report import render_table
from embedded.state import StateDir

_PROMPT = "Say hello to torpor."


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


@dataclass
class _Call:
    started: float = 0.0
    first_token_at: float | None = None
    finished_at: float | None = None
    text: list[str] = field(default_factory=list)
    error: str | None = None


def _stream_chat(base_url: str, model: str, call: _Call) -> None:
    """One streaming chat completion, recording time to first token."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": _PROMPT}],
        "max_tokens": 24,
        "stream": True,
    }
    call.started = time.monotonic()
    try:
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=600) as r:
            if r.status_code != 200:
                r.read()
                call.error = f"HTTP {r.status_code}: {r.text}"
                return
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                delta = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                if delta:
                    if call.first_token_at is None:
                        call.first_token_at = time.monotonic()
                    call.text.append(delta)
    except httpx.HTTPError as e:
        call.error = f"{type(e).__name__}: {e}"
    finally:
        call.finished_at = time.monotonic()


def _revision(client: ControlClient, service: str) -> dict[str, Any]:
    rows = [r for r in client.status()["revisions"] if r["service"] == service]
    return rows[0] if rows else {}


def _call_with_progress(client: ControlClient, url: str, service: str, model: str) -> _Call:
    call = _Call()
    worker = threading.Thread(target=_stream_chat, args=(url, model, call), daemon=True)
    worker.start()
    last = ""
    while worker.is_alive():
        worker.join(timeout=1.0)
        if not worker.is_alive() or call.first_token_at is not None:
            break
        row = _revision(client, service)
        waited = time.monotonic() - call.started
        line = (
            f"   {waited:5.1f}s  state={row.get('state')} starting={row.get('starting_replicas')} "
            f"ready={row.get('ready_replicas')} queued={row.get('queued_requests')}"
        )
        if line.split("s ", 1)[1] != last or int(waited) % 5 == 0:
            print(line, flush=True)
            last = line.split("s ", 1)[1]
    worker.join()
    return call


def _wait_for(client: ControlClient, service: str, pred: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = _revision(client, service)
        if pred == "zero" and row.get("desired_replicas") == 0 and row.get("ready_replicas") == 0:
            return row
        time.sleep(1.0)
    raise SystemExit(f"torpor demo: {service} did not reach {pred} within {timeout_s:.0f}s: {row}")


def _shown(path: Path) -> str:
    """A path as the person who ran the demo would type it: relative to where they are, or
    under ``~``."""
    resolved = path.resolve()
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + str(resolved.relative_to(base))
        except ValueError:
            continue
    return str(path)


def run_demo(*, home: Path, manifest: Path, port: int, control_port: int) -> int:
    state = StateDir(home).ensure()
    model_dir = state.models / "tiny-llama"
    _step(f"Making the tiny Llama in {_shown(model_dir)} (torpor models make-tiny)")
    from runtime.tinymodel import make_tiny_llama

    make_tiny_llama(model_dir)

    _step(f"Starting the embedded platform (torpor up --port {port})")
    log_path = state.root / "torpor-up.log"
    up = spawn_up(home, port=port, control_port=control_port)
    try:
        wait_up(home, up)
        return _tour(ControlClient.from_state(state), manifest, port)
    finally:
        _step("Stopping the platform (SIGTERM to torpor up)")
        code = stop_up(up, timeout_s=60)
        print(f"   torpor up exited with code {code}; its log is {_shown(log_path)}", flush=True)


def _tour(client: ControlClient, manifest: Path, port: int) -> int:
    _step(f"Deploying {_shown(manifest)} (torpor deploy -f {_shown(manifest)})")
    result = client.deploy(manifest.read_bytes(), source=manifest.name)
    service = result["service"].split("/", 1)[1]
    print(f"   service/{result['service']} revision {result['latest_revision']}")
    url = result["url"]

    _step("Waiting for the warm pool: a standby runtime that has imported vLLM, holding no model")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        pool = client.status().get("warm_pool", {})
        if not pool.get("size") or pool.get("ready", 0) >= 1:
            break
        time.sleep(1.0)
    print(f"   warm pool: {pool.get('ready', 0)}/{pool.get('size', 0)} ready", flush=True)

    _step("Status before the first call: the revision is at zero (torpor status)")
    print(render_table(client.status()), flush=True)

    _step(f"Calling {url}/v1/chat/completions (streaming) - a cold start from zero")
    cold = _call_with_progress(client, url, service, service)
    if cold.error or cold.first_token_at is None:
        print(f"   the call failed: {cold.error}", flush=True)
        return 1
    print(f"   answer (random weights, so the words are noise): {''.join(cold.text)!r}")
    print(
        f"   cold start: first token after {cold.first_token_at - cold.started:.1f} s "
        f"(request at zero replicas -> first token)",
        flush=True,
    )
    # The platform records a cold start from the replica's start-up line, which the runtime prints
    # when its own /health check passes: up to a few seconds after the first answer.
    row = _revision(client, service)
    for _ in range(50):
        if row.get("last_cold_start"):
            break
        time.sleep(0.1)
        row = _revision(client, service)
    if row.get("last_cold_start"):
        phases = row["last_cold_start"]["phases"]
        print(
            "   replica start-up phases (s since launch): "
            + ", ".join(f"{k}={v:.1f}" for k, v in phases.items()),
            flush=True,
        )

    _step("Calling again: a replica is ready now")
    warm = _call_with_progress(client, url, service, service)
    if warm.first_token_at is not None:
        print(f"   first token after {warm.first_token_at - warm.started:.3f} s", flush=True)

    _step("Status with a ready replica")
    print(render_table(client.status()), flush=True)

    _step("Waiting for the idle revision to scale back to zero")
    started = time.monotonic()
    _wait_for(client, service, "zero", timeout_s=300)
    print(f"   scaled to zero after {time.monotonic() - started:.0f} s idle", flush=True)
    print(render_table(client.status()), flush=True)
    print(
        f"\nCold start from zero to first token: {cold.first_token_at - cold.started:.1f} s",
        flush=True,
    )
    return 0
