"""Suite-wide fixtures. Component fixtures live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.leaks",
]
