"""Free loopback ports, and waiting for something to listen on one: for tests and benchmarks.

The one ``free_port`` every test and benchmark uses. (The local actuator has its own,
``embedded.local_actuator.free_port``: product code, which must not import this package.)
"""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released).

    Connections to it are refused until something binds it; a racing process could take it in
    between, which on a test machine does not happen often enough to design around.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, timeout_s: float = 20.0) -> None:
    """Until a connection to ``127.0.0.1:port`` succeeds; ``TimeoutError`` past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout_s}s")
