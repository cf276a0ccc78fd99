"""A real embedded platform (``torpor up`` as a child process) with the tiny model, for e2e.

The platform itself is ``harness.platform.Platform``, shared with the fault runs and benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.platform import Platform


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runtime.tinymodel import make_tiny_llama

    home = tmp_path_factory.mktemp("torpor-home")
    make_tiny_llama(home / "models" / "tiny-llama")
    return home


@pytest.fixture
def platform(tiny_home: Path) -> Iterator[Platform]:
    p = Platform.start(tiny_home, timeout_s=60)
    try:
        yield p
    finally:
        p.stop()
        print(p.log_tail())
