"""The suspended tier (issue 17) as a user meets it: tiny-chat with short suspend windows, the
processes of a replica and the CPU they use, and the ``torpor_suspended`` cold-start variant.

Shared by ``tests/e2e/test_suspend.py`` and ``benchmarks/coldstart.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import httpx

from harness.faults.processes import group_members, listening_pid
from harness.manifests import TINY_CHAT
from harness.platform import Control, Platform

SUSPEND_AFTER = "3s"
STOP_SUSPENDED_AFTER = "15s"


def suspended_tiny_chat(
    directory: Path,
    name: str = "tiny-chat",
    *,
    suspend_after: str = SUSPEND_AFTER,
    stop_after: str = STOP_SUSPENDED_AFTER,
) -> Path:
    """tiny-chat (window 10 s, grace 10 s) as service ``name``, suspended after ``suspend_after``
    idle and stopped ``stop_after`` later (once its window has read zero for the grace)."""
    text = TINY_CHAT.read_text()
    text = text.replace("name: tiny-chat", f"name: {name}")
    text = text.replace("--served-model-name=tiny-chat", f"--served-model-name={name}")
    anchor = '        torpor.dev/scale-to-zero-grace-period: "10s"\n'
    assert anchor in text
    text = text.replace(
        anchor,
        anchor
        + f'        torpor.dev/suspend-after: "{suspend_after}"\n'
        + f'        torpor.dev/stop-suspended-after: "{stop_after}"\n',
    )
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def replica_group(url: str) -> set[int]:
    """The process group of the replica listening at ``url`` (http://127.0.0.1:<port>)."""
    pid = listening_pid(int(url.rsplit(":", 1)[1]))
    if pid is None:
        raise LookupError(f"nothing listens at {url}")
    return {os.getpgid(pid)}


def cpu_ticks(groups: set[int]) -> dict[int, int]:
    """utime + stime (clock ticks) of every live process in ``groups``, by pid."""
    out: dict[int, int] = {}
    for pid in group_members(groups):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()
            out[pid] = int(fields[11]) + int(fields[12])  # fields 14, 15 of proc(5)
    return out


def process_states(groups: set[int]) -> dict[int, str]:
    """The state letter (R, S, T, ...) of every live process in ``groups``."""
    out: dict[int, str] = {}
    for pid in group_members(groups):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            out[pid] = stat[stat.rindex(b")") + 2 :].split()[0].decode()
    return out


def row_of(doc: dict[str, Any], service: str) -> dict[str, Any] | None:
    rows = [r for r in doc.get("revisions", []) if r["service"] == service]
    return rows[0] if rows else None


async def wait_for_state(
    control: Control, service: str, state: str, limit_s: float
) -> dict[str, Any]:
    """The service's status row once its revision shows ``state``."""
    deadline = time.monotonic() + limit_s
    row: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            row = row_of(await control.status(), service)
            if row is not None and row["state"] == state:
                return row
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{service} never {state}: {row}")


async def suspended_first_token(
    platform: Platform, directory: Path, first_token: Any
) -> tuple[float, float]:
    """Deploy the suspended tiny-chat at zero, cold-start it with one request, wait until it is
    suspended, and time a request at the suspended revision to its first token. Returns (wake
    to first token, the cold start's first token) in seconds. ``first_token`` is the variants'
    streaming probe (``harness.coldstart.variants.first_token``)."""
    async with Control(platform) as control:
        await control.deploy(suspended_tiny_chat(directory))
        t0 = time.monotonic()
        await first_token(platform.port, "tiny-chat", "/default/tiny-chat", timeout_s=300)
        cold = time.monotonic() - t0
        await wait_for_state(control, "tiny-chat", "suspended", 60)
        await asyncio.sleep(1)  # a suspended revision at rest, not one just frozen
        t0 = time.monotonic()
        await first_token(platform.port, "tiny-chat", "/default/tiny-chat", timeout_s=60)
        wake = time.monotonic() - t0
        with contextlib.suppress(httpx.HTTPError):
            await control.delete("default", "tiny-chat")
    return wake, cold
