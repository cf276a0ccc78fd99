"""The attack suite (issue 23) reuses the e2e platform fixtures (a real ``torpor up``) and the
activator's (served over HTTP with a fake replica)."""

from tests.activator.conftest import running_activator
from tests.e2e.conftest import home, platform, tiny_home

__all__ = ["home", "platform", "running_activator", "tiny_home"]
