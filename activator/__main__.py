"""``python -m activator``: one activator of several, sharing the Redis bus (Kubernetes).

Settings come from flags or the ``torpor-defaults`` ConfigMap's environment: ``TORPOR_BUS_URL``,
``TORPOR_DOMAIN``, ``TORPOR_ACTIVATOR_ID`` (the pod name), ``TORPOR_SECRETS_DIR`` (mounted
per-service API key Secrets, ``<dir>/<namespace>/<secret>``), ``TORPOR_ACTIVATOR_WORKERS``,
``TORPOR_KEEPALIVE_INTERVAL`` (seconds between SSE comments to a held stream, ``activator
.keepalive``).

``--workers N`` (N > 1) runs N activator processes on the one port, each a whole activator with
id ``<id>-<k>`` and its own bus connection, under a supervisor (``activator.http.workers``);
with the default of 1 this process is the activator itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
import uvloop

from activator.app import ActivatorConfig, build_activator
from activator.auth import FileKeyStore
from activator.http.http1 import (
    BODY_IDLE_TIMEOUT_S,
    BODY_TIMEOUT_S,
    HEAD_TIMEOUT_S,
    HttpLimits,
)
from activator.http.server import uvicorn_config
from activator.http.workers import bind_listeners, exit_when_orphaned, run_workers
from torpor.bus.redis import RedisBus, bus_password
from torpor.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="python -m activator", description=__doc__)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--bus", default=env.get("TORPOR_BUS_URL"), help="redis:// URL of the bus")
    p.add_argument("--domain", default=env.get("TORPOR_DOMAIN", "example.com"))
    p.add_argument("--id", default=env.get("TORPOR_ACTIVATOR_ID", socket.gethostname()))
    p.add_argument("--secrets-dir", type=Path, default=env.get("TORPOR_SECRETS_DIR"))
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=300.0,
        help="seconds SIGTERM waits for requests in flight",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(env.get("TORPOR_ACTIVATOR_WORKERS", "1")),
        help="activator processes sharing the port (SO_REUSEPORT); 1 runs no supervisor",
    )
    p.add_argument(
        "--head-timeout",
        type=float,
        default=HEAD_TIMEOUT_S,
        help="seconds a client has to send a request's line and headers (then 408)",
    )
    p.add_argument(
        "--body-idle-timeout",
        type=float,
        default=BODY_IDLE_TIMEOUT_S,
        help="seconds a request body may stall while it is being read (then 408)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=BODY_TIMEOUT_S,
        help="seconds the whole request body may take, however it trickles (then 408)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="client connections per activator process (default: from the open-file limit)",
    )
    p.add_argument(
        "--keepalive-interval",
        type=float,
        default=float(env.get("TORPOR_KEEPALIVE_INTERVAL", "5")),
        help="seconds between SSE comments to a streaming request held for a replica; 0: none",
    )
    p.add_argument(
        "--engine-load-interval",
        type=float,
        default=0.0,
        help="seconds between scrapes of replicas' vLLM load for engine-aware balancing and "
        "prefix affinity (e.g. 1); 0, the default: power of two choices on in-flight requests",
    )
    p.add_argument(
        "--resync-interval",
        type=float,
        default=300.0,
        help="seconds between full re-reads of the routing table from the bus, besides its "
        "events; 0: never",
    )
    # A worker started by the supervisor serves the listening socket it inherited.
    p.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    return p


async def _serve(args: argparse.Namespace) -> None:
    bus = await RedisBus.connect(args.bus, password=bus_password(os.environ))
    try:
        keys = FileKeyStore(args.secrets_dir) if args.secrets_dir else None
        config = ActivatorConfig(
            activator_id=args.id,
            domain=args.domain,
            key_store=keys,
            keepalive_s=args.keepalive_interval,
            engine_load_s=args.engine_load_interval,
            resync_s=args.resync_interval,
        )
        activator = build_activator(bus, config)
        server = uvicorn.Server(
            uvicorn_config(
                activator.app,
                args.host,
                args.port,
                limits=_limits(args),
                timeout_graceful_shutdown=args.drain_timeout,
            )
        )
        async with activator.running():
            if args.listen_fd is None:
                await server.serve()
                return
            orphaned = asyncio.create_task(exit_when_orphaned(server))
            try:
                await server.serve(sockets=[socket.socket(fileno=args.listen_fd)])
            finally:
                orphaned.cancel()
    finally:
        await bus.aclose()


def _limits(args: argparse.Namespace) -> HttpLimits:
    if args.max_connections is None:
        return HttpLimits(args.head_timeout, args.body_idle_timeout,
                          body_timeout_s=args.body_timeout)
    return HttpLimits(args.head_timeout, args.body_idle_timeout, args.max_connections,
                      body_timeout_s=args.body_timeout)


def _worker_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment of every worker; the bus URL travels in the environment."""
    argv = [
        sys.executable,
        "-m",
        "activator",
        "--workers=1",
        f"--domain={args.domain}",
        f"--drain-timeout={args.drain_timeout}",
        f"--head-timeout={args.head_timeout}",
        f"--body-idle-timeout={args.body_idle_timeout}",
        f"--body-timeout={args.body_timeout}",
        f"--keepalive-interval={args.keepalive_interval}",
        f"--engine-load-interval={args.engine_load_interval}",
        f"--resync-interval={args.resync_interval}",
    ]
    if args.max_connections is not None:
        argv.append(f"--max-connections={args.max_connections}")
    if args.secrets_dir:
        argv.append(f"--secrets-dir={args.secrets_dir}")
    # Off the command line, where any local user could read a password in it.
    return argv, {**os.environ, "TORPOR_BUS_URL": args.bus}


def _supervise(args: argparse.Namespace) -> int:
    argv, env = _worker_command(args)

    def command(k: int, fd: int) -> Sequence[str]:
        return [*argv, f"--id={args.id}-{k}", f"--listen-fd={fd}"]

    sockets = bind_listeners(args.host, args.port, args.workers)
    return run_workers(sockets, command, env)


def main() -> None:
    args = _parser().parse_args()
    if not args.bus:
        raise SystemExit("python -m activator: --bus or TORPOR_BUS_URL is required")
    if args.workers < 1:
        raise SystemExit("python -m activator: --workers must be at least 1")
    try:
        _limits(args)
    except ValueError as exc:
        raise SystemExit(f"python -m activator: {exc}") from None
    configure_logging()
    if args.workers > 1 and args.listen_fd is None:
        raise SystemExit(_supervise(args))
    # uvicorn picks its loop only in Server.run; serving from here, choose it the same way.
    uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
