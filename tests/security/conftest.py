"""The attack suite (issue 23) reuses the e2e platform fixtures: a real ``torpor up``."""

from tests.e2e.conftest import home, platform, tiny_home

__all__ = ["home", "platform", "tiny_home"]
