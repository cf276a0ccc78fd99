"""``python -m knative`` without an API server: it waits (no crash loop) and stops on SIGTERM.

As PID 1 in a container, a process ignores a signal it has no handler for; before this, the
autoscaler had none until its caches had synced, so a pod whose API server was unreachable was
SIGKILLed at the end of its grace period. A refused connection used to crash it (exit 1) instead
of being retried like an error status.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from harness.ports import free_port
from harness.redis_server import RedisServer
from tests.integration.autoscaler_process import AutoscalerProcess

pytestmark = pytest.mark.redis


@contextmanager
def refusing() -> Iterator[str]:
    yield f"http://127.0.0.1:{free_port()}"  # nothing listens there


@contextmanager
def silent() -> Iterator[str]:
    """Accepts connections and never answers: every request waits for its read timeout."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("api_server", [refusing, silent], ids=["refusing", "silent"])
def test_without_an_api_server_it_waits_and_sigterm_stops_it(
    api_server: Callable[[], AbstractContextManager[str]],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    with api_server() as address:
        process = AutoscalerProcess("a", address, redis_server.url, tmp_path)
        try:
            # Connected to the bus: past its imports and its signal handler, retrying the API
            # server (its log says so; a fixed sleep is too short on a loaded machine).
            deadline = time.monotonic() + 60
            while "subscribed" not in process.log.read_text() and time.monotonic() < deadline:
                assert process.process.poll() is None, process.log.read_text()
                time.sleep(0.1)
            time.sleep(1)
            assert process.process.poll() is None, process.log.read_text()
            process.process.send_signal(signal.SIGTERM)
            assert process.process.wait(timeout=20) == 0, process.log.read_text()
        finally:
            if process.process.poll() is None:
                process.process.kill()
                process.process.wait()
