"""``python -m autoscaler`` stops on SIGTERM at any point, start-up included.

As PID 1 in a container, a process ignores a signal it has no handler for; before this, the
autoscaler had none until its caches had synced, so a pod whose API server was unreachable was
SIGKILLed at the end of its grace period.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from harness.redis_server import RedisServer
from tests.integration.autoscaler_process import AutoscalerProcess

pytestmark = pytest.mark.redis


def test_sigterm_stops_an_autoscaler_still_waiting_for_its_api_server(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # An API server that accepts connections and never answers: the autoscaler waits on it.
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)
    address = f"http://127.0.0.1:{silent.getsockname()[1]}"
    process = AutoscalerProcess("a", address, redis_server.url, tmp_path)
    try:
        time.sleep(3)  # long enough to be past its imports and retrying the API server
        assert process.process.poll() is None, process.log.read_text()
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=20) == 0, process.log.read_text()
    finally:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()
        silent.close()
