"""Fault runs: a fresh embedded platform home per test, sharing one tiny model built per session.

Each test gets its own home (the services it deploys must not leak into other tests' state) with
``models/tiny-llama`` linked to the one model.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runtime.tinymodel import make_tiny_llama

    path = tmp_path_factory.mktemp("fault-model") / "tiny-llama"
    make_tiny_llama(path)
    return path


@pytest.fixture
def fault_home(tmp_path: Path, tiny_model: Path) -> Path:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny-llama").symlink_to(tiny_model)
    return home
