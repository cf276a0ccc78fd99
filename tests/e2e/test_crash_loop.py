"""A revision whose engine dies at its first request, on the real embedded platform (issue 21).

The model is the tiny Llama with a 64-entry vocabulary under its 512-token tokenizer
(``runtime.tinymodel`` size ``tiny-oov``): vLLM starts it and answers ``/health``, accepts the
prompt (its ids are checked against the larger of the two vocabularies), and its worker dies at
the first forward with ``IndexError: index out of range in self`` in the embedding; the API
server answers ``EngineDeadError`` and exits. That is what a replica does on a CPU whose kernels
SIGILL at the first step, without needing one.

The request is sent to the first replica (dead engine), held for the second, which is started at
once (the first death of a crash loop is replaced without delay), sent to it (dead engine again),
held again: the second death sets the kubelet's 10 s back-off, and the held request is answered
with ``503 replica_crash_loop`` instead of waiting out ``timeoutSeconds`` (300 s). Meanwhile new
requests fail fast with the same answer; ``torpor status`` shows the crash loop; after the
back-off a request starts the third try, whose death sets 20 s. Three launches in the window.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.manifests import renamed_tiny_chat
from harness.platform import Platform

pytestmark = pytest.mark.e2e

SERVICE = "crashy"
REVISION = f"{SERVICE}-00001"
LINE = "IndexError: index out of range in self"


def _launches(platform: Platform) -> int:
    """Replicas launched so far: the local actuator writes one log file per replica."""
    return len(list((platform.home / "logs" / "default" / REVISION).glob("*.log")))


def _ask(client: httpx.Client) -> httpx.Response:
    return client.post(
        f"/default/{SERVICE}/v1/completions",
        json={"model": SERVICE, "prompt": "Hello, how are you today?", "max_tokens": 4},
    )


def _crash_loop(platform: Platform) -> dict[str, Any]:
    row = platform.revision(SERVICE)
    assert row["state"] == "crash-loop", row
    crash: dict[str, Any] = row["crash_loop"]
    return crash


def test_a_replica_that_dies_at_its_first_request_is_a_crash_loop(
    home: Path, tmp_path: Path
) -> None:
    from runtime.tinymodel import make_tiny_llama

    make_tiny_llama(home / "models" / "crash-llama", size="tiny-oov")
    manifest = renamed_tiny_chat(tmp_path, SERVICE, model="crash-llama")
    platform = Platform.start(home, timeout_s=60)
    try:
        platform.cli("deploy", "-f", str(manifest))
        started = time.monotonic()
        with httpx.Client(base_url=platform.url, timeout=400) as client:
            held = _ask(client)
            held_s = time.monotonic() - started
            print(f"held request answered after {held_s:.1f}s: {held.status_code}")
            print(f"retry-after: {held.headers.get('retry-after')}; body: {held.text}")
            assert held.status_code == 503, held.text
            error = held.json()["error"]
            assert (error["code"], error["type"]) == ("replica_crash_loop", "server_error")
            assert f"revision default/{REVISION} is in a crash loop" in error["message"]
            assert "2 times in a row" in error["message"]
            assert "(IndexError)" in error["message"]  # the class, not the log line
            assert 1 <= int(held.headers["retry-after"]) <= 10
            assert held_s < 200, "answered by the crash loop, not the 300 s timeoutSeconds"
            assert _launches(platform) == 2

            # Meanwhile a new request fails fast, with the same answer.
            t = time.monotonic()
            fast = _ask(client)
            assert fast.status_code == 503 and time.monotonic() - t < 5
            assert fast.json()["error"]["code"] == "replica_crash_loop"

            crash = _crash_loop(platform)
            assert crash["restarts"] == 2 and crash["backoff_seconds"] == 10
            assert crash["last_error"] == LINE
            status = json.dumps(crash)
            table = platform.cli("status").stdout
            print(f"status --json crash_loop: {status}\n{table}")
            assert "crash-loop: back-off 10s (restart 2 at " in table and LINE in table

            # After the back-off, a request starts the next try; its death sets 20 s.
            time.sleep(max(0.0, crash["next_try_at"] - time.time()) + 0.5)
            third = _ask(client)
            print(f"after the back-off: {third.status_code} {third.text}")
            assert third.status_code == 503, third.text
            assert third.json()["error"]["code"] == "replica_crash_loop"
            assert "3 times in a row" in third.json()["error"]["message"]
            crash = _crash_loop(platform)
            assert crash["restarts"] == 3 and crash["backoff_seconds"] == 20
            for _ in range(3):
                assert _ask(client).status_code == 503
            window = time.monotonic() - started
            launches = _launches(platform)
            print(f"{launches} launches in {window:.0f}s")
            assert launches == 3
    finally:
        platform.stop()
        print(platform.log_tail(3000))
