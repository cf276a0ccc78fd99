"""An authenticated bus (issue 23, finding 7): with Redis AUTH on, a component without the
password, or with a wrong one, is refused and says why; the right one works; the password never
shows in what the bus prints."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from harness.redis_server import RedisServer
from torpor.bus.base import BusUnavailable
from torpor.bus.redis import RedisBus, bus_password, redacted

pytestmark = pytest.mark.redis
PASSWORD = "bus-s3cret"


async def _require_password(server: RedisServer) -> None:
    admin = aioredis.Redis.from_url(server.url)
    await admin.config_set("requirepass", PASSWORD)
    await admin.aclose()


@pytest.mark.parametrize("given", [None, "wrong"])
async def test_a_component_without_the_password_is_refused_and_says_why(
    redis_server: RedisServer, given: str | None
) -> None:
    await _require_password(redis_server)
    with pytest.raises(BusUnavailable) as info:
        await RedisBus.connect(redis_server.url, password=given, retry_for_s=1.0)
    message = str(info.value)
    assert "refused this component's credential" in message
    assert "TORPOR_BUS_PASSWORD" in message
    assert PASSWORD not in message and (given is None or given not in message)


async def test_the_right_password_works_and_never_shows(redis_server: RedisServer) -> None:
    await _require_password(redis_server)
    url = redis_server.url.replace("redis://", f"redis://:{PASSWORD}@")
    bus = await RedisBus.connect(url, retry_for_s=1.0)
    try:
        await bus.publish_services(())
        assert PASSWORD not in bus.url
    finally:
        await bus.aclose()
    bus = await RedisBus.connect(redis_server.url, password=PASSWORD, retry_for_s=1.0)
    await bus.aclose()


def test_password_from_the_environment(tmp_path: Path) -> None:
    assert bus_password({}) is None
    assert bus_password({"TORPOR_BUS_PASSWORD": "a"}) == "a"
    f = tmp_path / "pw"
    f.write_text("b\n")
    assert bus_password({"TORPOR_BUS_PASSWORD_FILE": str(f)}) == "b"
    assert redacted("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redacted("redis://u:pw@h/0") == "redis://u:***@h/0"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"
