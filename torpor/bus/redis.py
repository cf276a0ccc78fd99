"""The bus over a real ``redis-server``, for several activators and one autoscaler.

Layout under ``prefix`` (all values are ``torpor.codec`` JSON):

- ``<prefix>:services``           the whole list of services (a string key);
- ``<prefix>:endpoints``          hash revision -> ``{"v": version, "e": RevisionEndpoints}``;
- ``<prefix>:endpoint-versions``  hash revision -> last version (HINCRBY);
- ``<prefix>:stats:<id>``         one key per (activator, revision), expiring after
                                  ``stats_ttl_s`` so a dead activator's load stops counting;
- ``<prefix>:stats-index``        sorted set of those keys by expiry, so reads never SCAN;
- ``<prefix>:revision-stats:<r>`` the same for one revision's keys (``<r>`` its JSON string),
                                  expiring with its newest entry: the autoscaler's per-tick read;
- ``<prefix>:events``             one pub/sub channel for services, endpoints and pokes, so a
                                  subscriber sees them in the order they were published.

Each write and its notification happen in one Lua script, so a subscriber that reads state after
subscribing never misses a change between the two. The server runs without persistence, so a
restart loses everything: every ``RedisBus`` remembers what it published and puts it back after a
reconnect (only where the key is missing, so a newer write from someone else wins), with endpoint
versions carried above anything this instance has seen so they keep increasing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from torpor import codec
from torpor.bus.base import (
    ActivatorStats,
    BusEvent,
    BusSnapshot,
    BusUnavailable,
    EndpointsChanged,
    Poked,
    RevisionEndpoints,
    ServicesChanged,
)
from torpor.bus.fanout import DEFAULT_SUBSCRIBER_BOUND, Fanout, Subscription
from torpor.spec import ServiceSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "the server is not reachable right now"; anything else is a bug and propagates.
_TRANSIENT: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

# The bus password (Redis AUTH; issue 23), for every component: the value or a file holding it
# (a mounted Secret). A ``redis://:password@`` URL works too, but shows in process listings.
ENV_BUS_PASSWORD = "TORPOR_BUS_PASSWORD"
ENV_BUS_PASSWORD_FILE = "TORPOR_BUS_PASSWORD_FILE"


def bus_password(env: Mapping[str, str]) -> str | None:
    """The bus password from ``env`` (value, else file); None when neither is set."""
    value = env.get(ENV_BUS_PASSWORD, "")
    path = env.get(ENV_BUS_PASSWORD_FILE, "")
    if not value and path:
        with open(path, encoding="utf-8") as f:
            value = f.read(4096).strip()
    return value or None


def redacted(url: str) -> str:
    """``url`` with any password in its userinfo replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, host = rest.partition("@")
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{host}"

# One command may take this long before the connection counts as dead (a hung server, not a slow
# one: every command here is O(revisions)). Never longer than the caller's retry budget.
_COMMAND_TIMEOUT_S = 2.0

# Commands in flight at once per instance; the rest wait their turn. redis-py's pool holds 100
# connections and refuses the 101st (MaxConnectionsError); 10,000 revision loops starting together
# each read their stats, and without this bound most failed, were logged, and polled again every
# tick: the autoscaler spun at a whole core (benchmarks/control_plane_scale.py, N = 10,000).
_MAX_COMMANDS_IN_FLIGHT = 64

_PUBLISH_SERVICES = """
-- KEYS[1] services; ARGV[1] body, ARGV[2] channel, ARGV[3] '1' = only if missing
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], '{"t":"services","s":' .. ARGV[1] .. '}')
return 1
"""

_PUBLISH_ENDPOINTS = """
-- KEYS[1] versions, KEYS[2] endpoints; ARGV[1] revision, ARGV[2] body, ARGV[3] version floor,
-- ARGV[4] channel, ARGV[5] '1' = only if missing. Returns the new version, 0 if skipped.
if ARGV[5] == '1' and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local floor = tonumber(ARGV[3])
if v <= floor then
  v = floor + 1
  redis.call('HSET', KEYS[1], ARGV[1], v)
end
local doc = '{"v":' .. string.format('%d', v) .. ',"e":' .. ARGV[2] .. '}'
redis.call('HSET', KEYS[2], ARGV[1], doc)
redis.call('PUBLISH', ARGV[4], '{"t":"endpoints","v":' .. string.format('%d', v) .. ',"e":'
  .. ARGV[2] .. '}')
return v
"""

_PUBLISH_STATS = """
-- KEYS[1] index; ARGV[1] ttl ms, then (key, value, revision index) triples
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local expired = '(' .. string.format('%d', now)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', expired)
for i = 2, #ARGV, 3 do
  redis.call('SET', ARGV[i], ARGV[i + 1], 'PX', ttl)
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  redis.call('ZADD', ARGV[i + 2], now + ttl, ARGV[i])
  redis.call('ZREMRANGEBYSCORE', ARGV[i + 2], '-inf', expired)
  -- Every entry expires by now + ttl: a revision nobody reports on leaves no index behind.
  redis.call('PEXPIRE', ARGV[i + 2], ttl)
end
return #ARGV
"""

_REVISION_STATS = """
-- KEYS[1] one revision's stats index. Returns the live stats values.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%d', now), '+inf')
local stats = {}
for i = 1, #live, 500 do
  local values = redis.call('MGET', unpack(live, i, math.min(i + 499, #live)))
  for _, value in ipairs(values) do
    if value then stats[#stats + 1] = value end
  end
end
return stats
"""

_SNAPSHOT = """
-- KEYS[1] services, KEYS[2] endpoints, KEYS[3] stats index. One round trip, one consistent view.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local services = redis.call('GET', KEYS[1])
local endpoints = redis.call('HVALS', KEYS[2])
local live = redis.call('ZRANGEBYSCORE', KEYS[3], string.format('%d', now), '+inf')
local stats = {}
for i = 1, #live, 500 do
  local values = redis.call('MGET', unpack(live, i, math.min(i + 499, #live)))
  for _, value in ipairs(values) do
    if value then stats[#stats + 1] = value end
  end
end
return {services, endpoints, stats}
"""


class RedisBus:
    """``Bus`` over Redis. Use ``await RedisBus.connect(url)`` (or ``async with RedisBus(url)``):
    it subscribes before returning, so ``events()`` sees everything published afterwards.

    ``retry_for_s`` bounds how long a publish or snapshot keeps retrying while the server is
    unreachable before raising ``BusUnavailable``; the subscriber side reconnects forever with
    exponential backoff capped at ``reconnect_max_s``. The subscriber pings the server after
    ``liveness_s`` without traffic and reconnects when another ``liveness_s`` passes unanswered, so
    a server that hangs or vanishes without closing the socket is noticed too.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "torpor",
        stats_ttl_s: float = 10.0,
        retry_for_s: float = 2.0,
        reconnect_max_s: float = 2.0,
        liveness_s: float = 5.0,
        subscriber_bound: int = DEFAULT_SUBSCRIBER_BOUND,
        password: str | None = None,
    ) -> None:
        if stats_ttl_s <= 0:
            raise ValueError("stats_ttl_s must be positive")
        self.url = redacted(url)  # what logs and errors show: never a password
        self._refused: str | None = None  # why redis refused our credential, once it has
        self._prefix = prefix
        self._stats_ttl_ms = max(1, round(stats_ttl_s * 1000))
        self._retry_for_s = retry_for_s
        self._reconnect_max_s = reconnect_max_s
        self._liveness_s = liveness_s
        self._command_timeout_s = max(0.5, min(_COMMAND_TIMEOUT_S, retry_for_s))
        auth: dict[str, Any] = {} if password is None else {"password": password}
        self._redis = aioredis.Redis.from_url(
            url,
            **auth,
            socket_connect_timeout=self._command_timeout_s,
            socket_timeout=self._command_timeout_s,
            # Retries are ours (bounded, typed error); redis-py's own would hide outages.
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
        )
        self._services_key = f"{prefix}:services"
        self._endpoints_key = f"{prefix}:endpoints"
        self._versions_key = f"{prefix}:endpoint-versions"
        self._stats_index_key = f"{prefix}:stats-index"
        self._channel = f"{prefix}:events"
        self._publish_services_script = self._redis.register_script(_PUBLISH_SERVICES)
        self._publish_endpoints_script = self._redis.register_script(_PUBLISH_ENDPOINTS)
        self._publish_stats_script = self._redis.register_script(_PUBLISH_STATS)
        self._snapshot_script = self._redis.register_script(_SNAPSHOT)
        self._revision_stats_script = self._redis.register_script(_REVISION_STATS)
        self._fanout = Fanout(subscriber_bound)
        self._slots = asyncio.Semaphore(_MAX_COMMANDS_IN_FLIGHT)
        # What this instance published, to put back after the server lost it.
        self._own_services: tuple[ServiceSpec, ...] | None = None
        self._own_endpoints: dict[str, RevisionEndpoints] = {}
        # Highest endpoint version seen per revision (own publishes and events), the floor for
        # the next version so versions keep increasing across a server restart.
        self._versions: dict[str, int] = {}
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closed = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        prefix: str = "torpor",
        stats_ttl_s: float = 10.0,
        retry_for_s: float = 2.0,
        reconnect_max_s: float = 2.0,
        liveness_s: float = 5.0,
        subscriber_bound: int = DEFAULT_SUBSCRIBER_BOUND,
        password: str | None = None,
    ) -> RedisBus:
        bus = cls(
            url,
            prefix=prefix,
            stats_ttl_s=stats_ttl_s,
            retry_for_s=retry_for_s,
            reconnect_max_s=reconnect_max_s,
            liveness_s=liveness_s,
            subscriber_bound=subscriber_bound,
            password=password,
        )
        await bus.start()
        return bus

    async def start(self) -> None:
        """Subscribe to the event channel; ``BusUnavailable`` if that fails for ``retry_for_s``."""
        if self._closed:
            raise BusUnavailable("bus is closed")
        self._ensure_reader()
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout=max(self._retry_for_s, 0.1))
        except TimeoutError:
            await self.aclose()
            if self._refused is not None:
                raise BusUnavailable(
                    f"redis at {self.url} refused this component's credential ({self._refused});"
                    f" set ${ENV_BUS_PASSWORD} (or ${ENV_BUS_PASSWORD_FILE}) to the bus password"
                ) from None
            raise BusUnavailable(f"redis at {self.url} unreachable") from None

    @property
    def connected(self) -> bool:
        """Whether the subscriber is connected now (for readiness probes and metrics)."""
        return self._subscribed.is_set()

    async def __aenter__(self) -> RedisBus:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- publishing ---------------------------------------------------------------------------

    async def publish_services(self, services: Sequence[ServiceSpec]) -> None:
        services = tuple(services)
        self._own_services = services
        await self._retrying("publish_services", lambda: self._write_services(services, False))

    async def publish_endpoints(self, endpoints: RevisionEndpoints) -> None:
        self._own_endpoints[endpoints.revision] = endpoints
        version = await self._retrying(
            "publish_endpoints", lambda: self._write_endpoints(endpoints, only_if_missing=False)
        )
        self._note_version(endpoints.revision, version)

    async def publish_stats(self, stats: Sequence[ActivatorStats]) -> None:
        if not stats:
            return
        args: list[str | int] = [self._stats_ttl_ms]
        for s in stats:
            args += [self._stats_key(s), codec.dumps(s), self._revision_stats_key(s.revision)]

        async def write() -> object:
            return await self._publish_stats_script(keys=[self._stats_index_key], args=args)

        await self._retrying("publish_stats", write)

    async def poke(self, revision: str, adapter: str | None = None) -> None:
        doc = {"t": "poke", "r": revision}
        if adapter is not None:
            doc["a"] = adapter
        message = json.dumps(doc)

        async def send() -> object:
            return await self._redis.publish(self._channel, message)

        await self._retrying("poke", send)

    # -- reading ------------------------------------------------------------------------------

    async def snapshot(self) -> BusSnapshot:
        async def read() -> Any:
            return await self._snapshot_script(
                keys=[self._services_key, self._endpoints_key, self._stats_index_key]
            )

        raw_services, raw_endpoints, raw_stats = await self._retrying("snapshot", read)
        endpoints = {}
        for raw in raw_endpoints:
            e = _decode_endpoints(json.loads(raw))
            endpoints[e.revision] = e
        return BusSnapshot(
            services=_decode_services(json.loads(raw_services)) if raw_services else (),
            endpoints=endpoints,
            stats=tuple(codec.loads(ActivatorStats, raw) for raw in raw_stats),
        )

    async def revision_stats(self, revision: str) -> tuple[ActivatorStats, ...]:
        key = self._revision_stats_key(revision)

        async def read() -> Any:
            return await self._revision_stats_script(keys=[key])

        raw_stats = await self._retrying("revision_stats", read)
        return tuple(codec.loads(ActivatorStats, raw) for raw in raw_stats)

    def events(self) -> Subscription:
        """Events published after this call (after ``start()``); ends at ``aclose()``."""
        if not self._closed:
            self._ensure_reader()
        return self._fanout.subscribe()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fanout.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            # redis-py can swallow a cancellation that lands as a read timeout fires, so cancel
            # until the reader is gone; it also stops by itself at its next look at _closed.
            while not reader.done():
                reader.cancel()
                await asyncio.wait([reader], timeout=0.1)
            if not reader.cancelled() and reader.exception() is not None:
                log.error("bus: reader ended with an error", exc_info=reader.exception())
        await self._redis.aclose()

    # -- internals ----------------------------------------------------------------------------

    def _stats_key(self, s: ActivatorStats) -> str:
        # JSON keeps any activator id and revision key apart without an escaping scheme.
        return f"{self._prefix}:stats:" + json.dumps([s.activator_id, s.revision])

    def _revision_stats_key(self, revision: str) -> str:
        return f"{self._prefix}:revision-stats:" + json.dumps(revision)

    def _note_version(self, revision: str, version: int) -> None:
        if version > self._versions.get(revision, 0):
            self._versions[revision] = version

    async def _write_services(
        self, services: tuple[ServiceSpec, ...], only_if_missing: bool
    ) -> int:
        result = await self._publish_services_script(
            keys=[self._services_key],
            args=[codec.dumps(services), self._channel, "1" if only_if_missing else "0"],
        )
        return int(result)

    async def _write_endpoints(self, endpoints: RevisionEndpoints, *, only_if_missing: bool) -> int:
        result = await self._publish_endpoints_script(
            keys=[self._versions_key, self._endpoints_key],
            args=[
                endpoints.revision,
                codec.dumps(endpoints),
                # A caller's own version is a floor too, as MemoryBus honours it.
                max(self._versions.get(endpoints.revision, 0), endpoints.version - 1),
                self._channel,
                "1" if only_if_missing else "0",
            ],
        )
        return int(result)

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        if self._closed:
            raise BusUnavailable(f"{what}: bus is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_for_s
        delay = 0.02
        while True:
            try:
                async with self._slots:
                    return await op()
            except AuthenticationError as error:
                raise BusUnavailable(
                    f"{what}: redis at {self.url} refused this component's credential: {error}"
                ) from error
            except _TRANSIENT as error:
                if self._closed or loop.time() + delay > deadline:
                    raise BusUnavailable(f"{what}: redis at {self.url} unavailable: {error}") from (
                        error
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _ensure_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(
                self._read_forever(), name=f"RedisBus reader {self._prefix}"
            )

    async def _read_forever(self) -> None:
        delay = 0.05
        reconnecting = False
        while not self._closed:
            try:
                await self._read_once(resync=reconnecting)
            except AuthenticationError as error:
                if self._refused is None:
                    log.error("bus: redis at %s refused this component's credential: %s",
                              self.url, error)
                self._refused = str(error)
            except _TRANSIENT as error:
                log.warning("bus: lost redis at %s (%s); reconnecting", self.url, error)
            except Exception:
                # The reader must outlive anything: subscribers would otherwise wait forever.
                log.exception("bus: subscriber loop failed; reconnecting")
            if self._subscribed.is_set():
                # We were connected, so this is a fresh outage: start the backoff again.
                self._subscribed.clear()
                delay = 0.05
                reconnecting = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_s)

    async def _read_once(self, *, resync: bool) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            # Wait for the server's confirmation: only then is every later publish ours to see.
            while True:
                message = await pubsub.get_message(timeout=self._command_timeout_s)
                if message is None:
                    raise RedisTimeoutError("no subscribe confirmation")
                if message["type"] == "subscribe":
                    break
            if resync:
                await self._restore_own_state()
                await self._emit_current_state()
            self._subscribed.set()
            log.info("bus: subscribed to %s on %s", self._channel, self.url)
            await self._pump(pubsub)
        finally:
            await pubsub.aclose()

    async def _pump(self, pubsub: aioredis.client.PubSub) -> None:
        pinged = False
        while not self._closed:
            message = await pubsub.get_message(timeout=self._liveness_s)
            if message is None:
                if pinged:
                    raise RedisTimeoutError(f"no answer to ping in {self._liveness_s}s")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            if message["type"] != "message":
                continue
            event = self._decode_event(message["data"])
            if event is not None:
                self._fanout.emit(event)

    def _decode_event(self, data: bytes) -> BusEvent | None:
        try:
            doc = json.loads(data)
            kind = doc["t"]
            if kind == "poke":
                adapter = doc.get("a")
                return Poked(str(doc["r"]), None if adapter is None else str(adapter))
            if kind == "services":
                return ServicesChanged(_decode_services(doc["s"]))
            if kind == "endpoints":
                endpoints = _decode_endpoints(doc)
                self._note_version(endpoints.revision, endpoints.version)
                return EndpointsChanged(endpoints)
        except (ValueError, KeyError, TypeError) as error:
            log.warning("bus: dropping malformed message %r: %s", data[:200], error)
            return None
        log.warning("bus: dropping message of unknown kind %r", kind)
        return None

    async def _restore_own_state(self) -> None:
        if self._own_services is not None:
            await self._write_services(self._own_services, True)
        for endpoints in list(self._own_endpoints.values()):
            version = await self._write_endpoints(endpoints, only_if_missing=True)
            if version:
                self._note_version(endpoints.revision, version)

    async def _emit_current_state(self) -> None:
        """What a subscriber may have missed while disconnected, as whole sets. A key the server
        lost is not reported as empty: that would drop every route until a publisher restores it."""
        raw_services, raw_endpoints, _ = await self._snapshot_script(
            keys=[self._services_key, self._endpoints_key, self._stats_index_key]
        )
        if raw_services:
            self._fanout.emit(ServicesChanged(_decode_services(json.loads(raw_services))))
        for raw in raw_endpoints:
            endpoints = _decode_endpoints(json.loads(raw))
            self._note_version(endpoints.revision, endpoints.version)
            self._fanout.emit(EndpointsChanged(endpoints))


def _decode_services(data: Any) -> tuple[ServiceSpec, ...]:
    return tuple(codec.from_jsonable(ServiceSpec, s) for s in data)


def _decode_endpoints(doc: Any) -> RevisionEndpoints:
    e = codec.from_jsonable(RevisionEndpoints, doc["e"])
    return replace(e, version=int(doc["v"]))
