"""A real embedded platform (``torpor up`` as a child process) with the tiny model, for e2e.

The platform itself is ``harness.platform.Platform``, shared with the fault runs and benchmarks.
"""

from __future__ import annotations

import shutil
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
def home(tiny_home: Path, tmp_path: Path) -> Path:
    """A fresh state directory per test holding a copy of the tiny model: services a test
    deploys persist in its home, so a shared one would carry them into the next test."""
    home = tmp_path / "torpor-home"
    shutil.copytree(tiny_home / "models", home / "models")
    return home


@pytest.fixture
def platform(home: Path) -> Iterator[Platform]:
    p = Platform.start(home, timeout_s=60)
    try:
        yield p
    finally:
        p.stop()
        print(p.log_tail())
