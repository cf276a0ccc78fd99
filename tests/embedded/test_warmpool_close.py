"""Closing the warm pool while a standby is still starting stops that standby too.

Found by the fault run (tests/faults): ``torpor up`` stopped while the pool was refilling left
a ``python -m runtime standby`` process behind.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.embedded.test_warmpool import pool


async def test_aclose_during_a_spawn_stops_the_standby_being_started(tmp_path: Path) -> None:
    p = pool(tmp_path, size=1, refill_delay_s=0.0)
    p.start()
    async with asyncio.timeout(30):
        while p._starting is None:  # noqa: ASYNC110 (the spawn has no event to wait on)
            await asyncio.sleep(0.001)
    starting = p._starting
    try:
        await p.aclose()
        assert starting.returncode is not None, "the standby being started outlived the pool"
    finally:
        if starting.returncode is None:
            starting.signal(signal.SIGKILL)
            await starting.wait()
