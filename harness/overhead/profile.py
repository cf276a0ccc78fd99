"""Where a Python process's time goes under load: py-spy samples, by layer, line and function."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.load.wrk import wrk


def profile_activator(pid: int, url: str, connections: int, duration_s: float) -> dict[str, Any]:
    """Sample the activator with py-spy under load; top functions by own and inclusive time."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "stacks.txt"
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "500",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--duration",
                str(int(duration_s) + 1),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        wrk(url, connections, duration_s)
        spy.wait()
        own: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        areas: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            count = int(count_text)
            frames = [f for f in stack.split(";") if f]
            if not frames:
                continue
            total += count
            own[_short(frames[-1], keep_line=True)] += count
            for name in {_short(f) for f in frames}:
                inclusive[name] += count
            areas[_area(frames)] += count

    def share(counter: collections.Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"where": k, "share": round(v / total, 3)} for k, v in counter.most_common(n)]

    for name, count in list(inclusive.items()):
        if count > 0.95 * total:  # the entry point and the loop: in every sample, says nothing
            del inclusive[name]
    return {
        "samples": total,
        "by_area": share(areas, 10),
        "top_self": share(own, 15),
        "top_inclusive": share(inclusive, 20),
    }


def _short(frame: str, keep_line: bool = False) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    m = re.match(r"(.*) \((.*?):(\d+)\)", frame)
    if not m:
        return frame
    function, path, line = m.groups()
    if keep_line:
        path = f"{path}:{line}"
    parts = Path(path).parts
    for anchor in ("site-packages", "lib"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1 :]
            break
    return f"{function} ({'/'.join(parts[-3:])})"


_AREAS = (
    ("activator's own code", re.compile(r"(^|[ (/])activator/(?!.*activator_overhead)")),
    ("uvicorn's HTTP server protocol", re.compile(r"uvicorn/")),
    ("prometheus_client", re.compile(r"prometheus_client/")),
    ("asyncio (tasks, futures, events)", re.compile(r"asyncio/")),
)


def _area(frames: list[str]) -> str:
    """Attribute a sample to the library its innermost Python frame is in.

    Time inside C code (uvloop's event loop, socket system calls, httptools' parser) shows up
    under the Python frame that called it: a transport write under the function that wrote.
    """
    leaf = frames[-1]
    for name, pattern in _AREAS:
        if pattern.search(leaf):
            return name
    if "runners.py" in leaf or "uvloop" in leaf:
        return "event loop (uvloop, in C: polling, reads)"
    return "other"
