"""``python -m autoscaler``: the autoscaler and PodAutoscaler controller on Kubernetes.

Several replicas may run; a ``coordination.k8s.io`` Lease makes one the leader, which alone
actuates. ``/healthz`` and ``/metrics`` are served on ``--metrics-port``. Settings come from the
``torpor-defaults`` ConfigMap's environment (``TORPOR_BUS_URL``, ``TORPOR_IDENTITY``,
``TORPOR_LEASE_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import os

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autoscaler.actuators.knative import config_from_env, knative_actuator
from autoscaler.loop import Autoscaler
from torpor.bus.redis import RedisBus
from torpor.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autoscaler", description=__doc__)
    p.add_argument(
        "--actuator",
        choices=["knative"],
        default="knative",
        help="knative: scale revisions' Deployments (the embedded platform uses "
        "local processes through `torpor up` instead)",
    )
    p.add_argument("--bus", default=os.environ.get("TORPOR_BUS_URL"), help="redis:// URL")
    p.add_argument("--metrics-port", type=int, default=9090)
    p.add_argument("--kubeconfig", default=None, help="default: in-cluster configuration")
    p.add_argument("--tick", type=float, default=2.0, help="seconds between decisions")
    return p


def _metrics_app(scaler: Autoscaler) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(scaler.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics)])


async def _run(args: argparse.Namespace) -> None:
    config = config_from_env(os.environ)
    bus = await RedisBus.connect(args.bus)
    try:
        async with knative_actuator(bus, config, kubeconfig=args.kubeconfig) as actuator:
            scaler = Autoscaler(bus, actuator, tick_s=args.tick)
            server = uvicorn.Server(
                uvicorn.Config(
                    _metrics_app(scaler),
                    host="0.0.0.0",
                    port=args.metrics_port,
                    lifespan="off",
                    access_log=False,
                    log_level="warning",
                )
            )
            async with scaler.running():
                await server.serve()
    finally:
        await bus.aclose()


def main() -> None:
    args = _parser().parse_args()
    if not args.bus:
        raise SystemExit("python -m autoscaler: --bus or TORPOR_BUS_URL is required")
    configure_logging()
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
