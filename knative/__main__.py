"""``python -m knative``: the autoscaler and PodAutoscaler controller on Kubernetes.

Three parts, wired here: the ``KnativeController`` (caches, Lease, PodAutoscaler status, specs
published on the bus), the ``KnativeActuator`` over its caches (Deployment scales), and the
``Autoscaler`` loop deciding through that actuator. Several replicas may run; the
``coordination.k8s.io`` Lease makes one the leader, and the one Lease check gates everything that
acts: the controller's writes, the loop's publications and decisions, the actuator's scales (which
refuse with ``NotLeader`` on a standby). ``/healthz`` and ``/metrics`` are served on
``--metrics-port`` once the caches have synced. Beside them, the leader scrapes Knative's own
activator for requests it holds for torpor-class revisions (``knative_demand``), so a request
through Knative's URL wakes a revision at zero. Settings come from the ``torpor-defaults``
ConfigMap's environment (``TORPOR_BUS_URL``, ``TORPOR_IDENTITY``, ``TORPOR_LEASE_*``,
``TORPOR_KNATIVE_*``). SIGTERM stops it at any point, start-up included (as PID 1 in a container
a signal without a handler is ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autoscaler.loop import Autoscaler
from autoscaler.lora_client import HttpLoraClient, replica_token
from autoscaler.scrape import HttpScraper
from knative.actuator import KnativeActuator
from knative.config import KnativeConfig, config_from_env
from knative.controller import KnativeController
from knative.demand import (
    DemandConfig,
    demand_config_from_env,
    knative_demand,
)
from knative.kube import Kube
from torpor.bus.redis import RedisBus, bus_password
from torpor.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m knative", description=__doc__)
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
    demand = demand_config_from_env(os.environ)
    # Until uvicorn installs its own handlers (once the caches have synced), SIGTERM cancels the
    # start-up: the Lease, the watches and the bus are closed by their context managers.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    # Requests end before the Lease can pass to another replica (issue 22, fix 5).
    timeout = config.lease.call_timeout_s
    kube = (
        Kube.from_kubeconfig(args.kubeconfig, request_timeout_s=timeout)
        if args.kubeconfig
        else Kube.in_cluster(request_timeout_s=timeout)
    )
    try:
        await _serve(args, config, demand, kube)
    except asyncio.CancelledError:
        pass
    finally:
        await kube.aclose()


async def _serve(
    args: argparse.Namespace, config: KnativeConfig, demand: DemandConfig, kube: Kube
) -> None:
    bus = await RedisBus.connect(args.bus, password=bus_password(os.environ))
    try:
        async with KnativeController(kube, bus, config) as controller:
            await controller.synced()
            actuator = KnativeActuator(
                kube,
                controller,
                leader=controller.leader,
                identity=config.identity,
                max_conflict_retries=config.max_conflict_retries,
            )
            # The replicas' platform credential (runtime.gate): /metrics and adapter loads.
            token = replica_token(os.environ)
            credential = (lambda url: token) if token else None
            scraper = HttpScraper(credential=credential)
            lora = HttpLoraClient(credential=credential)
            scaler = Autoscaler(bus, actuator, tick_s=args.tick, leader=controller.leader,
                                scrape=scraper, lora=lora)
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
            async with (
                scaler.running(),
                knative_demand(bus, demand, kube, leader=controller.leader),
            ):
                await server.serve()
            await scraper.aclose()
            await lora.aclose()
    finally:
        await bus.aclose()


def main() -> None:
    args = _parser().parse_args()
    if not args.bus:
        raise SystemExit("python -m knative: --bus or TORPOR_BUS_URL is required")
    configure_logging()
    asyncio.run(_run(args))
    # Everything is closed by now. A thread still blocked in a request to an API server that
    # does not answer would hold the interpreter's exit for its read timeout (30 s, a whole grace
    # period); its answer is no longer wanted, so leave without joining it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
