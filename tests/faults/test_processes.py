"""The fault run's process finders, on processes of the test's own (no vLLM)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from harness.faults.processes import engine_pids, listening_pid


def test_the_process_listening_on_a_port_is_found() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert listening_pid(port) == os.getpid()
    assert listening_pid(port) is None


def test_a_replicas_engine_is_its_child_titled_engine_core() -> None:
    # A child whose command line names the engine core, as vLLM's setproctitle does, and a
    # plain one beside it: only the first is the engine.
    title = "import time; time.sleep(30)  # VLLM::EngineCore"
    engine = subprocess.Popen([sys.executable, "-c", title])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert engine_pids(os.getpid()) == [engine.pid]
    finally:
        for child in (engine, other):
            child.kill()
            child.wait()
