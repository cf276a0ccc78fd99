"""``python -m activator``: one activator of several, sharing the Redis bus (Kubernetes).

Settings come from flags or the ``torpor-defaults`` ConfigMap's environment: ``TORPOR_BUS_URL``,
``TORPOR_DOMAIN``, ``TORPOR_ACTIVATOR_ID`` (the pod name), ``TORPOR_SECRETS_DIR`` (mounted
per-service API key Secrets, ``<dir>/<namespace>/<secret>``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from pathlib import Path

import uvicorn

from activator.app import ActivatorConfig, build_activator
from activator.auth import FileKeyStore
from activator.server import uvicorn_config
from torpor.bus.redis import RedisBus
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
    return p


async def _serve(args: argparse.Namespace) -> None:
    bus = await RedisBus.connect(args.bus)
    try:
        keys = FileKeyStore(args.secrets_dir) if args.secrets_dir else None
        config = ActivatorConfig(activator_id=args.id, domain=args.domain, key_store=keys)
        activator = build_activator(bus, config)
        server = uvicorn.Server(
            uvicorn_config(
                activator.app,
                args.host,
                args.port,
                timeout_graceful_shutdown=args.drain_timeout,
            )
        )
        async with activator.running():
            await server.serve()
    finally:
        await bus.aclose()


def main() -> None:
    args = _parser().parse_args()
    if not args.bus:
        raise SystemExit("python -m activator: --bus or TORPOR_BUS_URL is required")
    configure_logging()
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
