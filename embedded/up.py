"""``torpor up``: every part of the platform in one process, replicas as local processes.

The wiring is explicit: one in-process bus, the control plane, one activator, the autoscaler with
the local actuator, and two loopback HTTP servers (activator and control API). Shutdown stops the
servers, then every replica the actuator started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import generate_latest

from activator.app import ActivatorConfig, build_activator
from activator.auth import FileKeyStore
from activator.http.server import uvicorn_config
from autoscaler.loop import Autoscaler
from autoscaler.lora_client import HttpLoraClient
from autoscaler.scrape import HttpScraper
from embedded.control_api import build_control_app
from embedded.controlplane import ControlPlane
from embedded.local_actuator import LocalActuator, SubprocessLauncher, local_model_path
from embedded.state import ControlAddress, StateDir
from embedded.warmpool import WarmPool, WarmPoolLauncher
from torpor.bus import MemoryBus
from torpor.manifest.limits import ScaleLimits
from torpor.status import RevisionStatus

log = logging.getLogger("embedded.up")


@dataclass(frozen=True, slots=True)
class EmbeddedConfig:
    home: Path
    host: str = "127.0.0.1"
    port: int = 8080
    control_host: str = "127.0.0.1"
    control_port: int = 8081
    domain: str = "example.com"
    tick_s: float = 2.0
    drain_timeout_s: float = 30.0
    warm_pool: int = 1  # standby runtime processes with vLLM imported, holding no model
    # Replicas per revision and at rest in total (torpor.manifest.limits has the defaults' why).
    limits: ScaleLimits = field(default_factory=ScaleLimits)


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the platform (two servers share a loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(app: Any, host: str, port: int, drain_timeout_s: float) -> _QuietServer:
    # On shutdown uvicorn stops accepting and waits this long for requests in flight.
    return _QuietServer(uvicorn_config(app, host, port, timeout_graceful_shutdown=drain_timeout_s))


@dataclass(frozen=True, slots=True)
class RunningPlatform:
    address: ControlAddress
    kill_now: Callable[[], None]  # SIGKILL every replica, synchronously (second signal)


def _check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise SystemExit(
                f"torpor up: cannot listen for the {what} on {host}:{port}: {e.strerror}"
            ) from e


@contextlib.asynccontextmanager
async def embedded_platform(config: EmbeddedConfig) -> AsyncIterator[RunningPlatform]:
    """Start every part; yield the addresses; stop everything on exit."""
    state = StateDir(config.home).ensure()
    token = state.token()
    bus = MemoryBus()
    activator_url = f"http://{config.host}:{config.port}"
    control_url = f"http://{config.control_host}:{config.control_port}"
    _check_port_free(config.host, config.port, "activator")
    _check_port_free(config.control_host, config.control_port, "control API")

    control = ControlPlane(
        bus,
        state,
        domain=config.domain,
        limits=config.limits,
        local_path=lambda path: local_model_path(path, state.root),
    )
    keys = FileKeyStore(state.root / "secrets")  # torpor.dev/api-keys-secret: NAME
    activator = build_activator(
        bus,
        ActivatorConfig(
            activator_id="embedded", domain=config.domain, key_store=keys,
            metrics_token=token,  # /metrics lists every service: behind the control token
        ),
    )
    pool = WarmPool(config.warm_pool, state.root)
    launcher = WarmPoolLauncher(
        pool, SubprocessLauncher((sys.executable, "-m", "runtime", "serve"))
    )
    actuator = LocalActuator(home=state.root, launcher=launcher)
    # LoRA adapters are loaded from the manifest's /models/<name>, this machine's <home>/models.
    # The autoscaler's calls to a replica carry that replica's platform credential (issue 23).
    lora = HttpLoraClient(
        lambda path: local_model_path(path, state.root), credential=actuator.credential
    )
    scraper = HttpScraper(credential=actuator.credential)
    scaler = Autoscaler(bus, actuator, tick_s=config.tick_s, lora=lora, scrape=scraper)

    def statuses() -> list[RevisionStatus]:
        # The autoscaler's rows with this activator's live counts: the autoscaler only sees the
        # counts it read on its last tick, a second or two ago.
        live = {s.revision: s for s in activator.stats()}
        return [
            replace(
                row,
                queued_requests=live[row.revision].queued,
                in_flight_requests=live[row.revision].in_flight,
            )
            if row.revision in live
            else row
            for row in scaler.statuses()
        ]

    def platform() -> dict[str, Any]:
        return {"warm_pool": {"size": config.warm_pool, "ready": pool.ready_count}}

    def metrics() -> bytes:
        return generate_latest(scaler.registry)

    control_app = build_control_app(
        control,
        statuses,
        token=token,
        activator_url=activator_url,
        platform=platform,
        metrics=metrics,
    )
    servers = [
        _server(activator.app, config.host, config.port, config.drain_timeout_s),
        _server(control_app, config.control_host, config.control_port, config.drain_timeout_s),
    ]
    address = ControlAddress(control_url=control_url, activator_url=activator_url, pid=os.getpid())
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(pool.aclose)
        stack.push_async_callback(lora.aclose)
        stack.push_async_callback(scraper.aclose)
        stack.push_async_callback(actuator.aclose)
        stack.push_async_callback(bus.aclose)
        await stack.enter_async_context(scaler.running())
        await stack.enter_async_context(activator.running())
        await control.start()
        pool.start()
        tasks = [asyncio.create_task(s.serve(), name=f"uvicorn:{i}") for i, s in enumerate(servers)]

        async def stop_servers() -> None:
            for s in servers:
                s.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)

        stack.push_async_callback(stop_servers)
        while not all(s.started for s in servers):
            if any(t.done() for t in tasks):
                raise SystemExit("torpor up: an HTTP server failed to start")
            await asyncio.sleep(0.02)
        state.write_address(address)
        stack.callback(state.clear_address)
        yield RunningPlatform(address, actuator.kill_now)


async def run_embedded(
    config: EmbeddedConfig, *, on_ready: Callable[[ControlAddress], None]
) -> None:
    """Run until SIGINT/SIGTERM. A second signal stops at once, replicas included."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    running: RunningPlatform | None = None

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: stopping at once")
            if running is not None:
                running.kill_now()
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with embedded_platform(config) as running:
            on_ready(running.address)
            await stop.wait()
            log.info("stopping: draining requests and stopping replicas")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
