"""The processes the overhead benchmark puts load on: the upstream, nginx, and the activator.

The same upstream (uvicorn + uvloop + httptools, one process) serves two workloads: ``/json``
(a fixed 90-byte JSON body) and ``/sse`` (``SSE_EVENTS`` server-sent events, one body chunk each,
then ``[DONE]``). In front of it: Debian's nginx as a reverse proxy (one worker, upstream
keepalive, ``proxy_buffering off`` so events stream), torpor's activator (served the way
``activator.http.server.uvicorn_config`` says, an in-process ``MemoryBus`` holding the route and
the ready endpoint; path form ``/bench/echo/<path>``), and the activator as N worker processes on
one port under ``activator.http.workers``' supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.ports import wait_listening

NGINX = "/usr/sbin/nginx"
JSON_BODY = json.dumps({"id": "cmpl-0", "object": "text_completion", "text": "x" * 30}).encode()
SSE_EVENTS = 16
NAMESPACE, SERVICE, REVISION = "bench", "echo", "echo-00001"
WORKERS = "activator-workers"  # the target name of the multi-worker activator


async def upstream_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/sse":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(SSE_EVENTS):
            chunk = b'data: {"token": %d}\n\n' % i
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(JSON_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": JSON_BODY})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(
        upstream_app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


def bench_service() -> Any:
    from torpor.spec import RevisionRef, RevisionSpec, RuntimeSpec, ServiceSpec, TrafficTarget

    revision = RevisionSpec(
        ref=RevisionRef(NAMESPACE, REVISION),
        service=SERVICE,
        generation=1,
        runtime=RuntimeSpec(image="bench", model="bench"),
        queue_depth=10_000,
    )
    return ServiceSpec(
        NAMESPACE, SERVICE, 1, (revision,), (TrafficTarget(REVISION, 100, latest_revision=True),)
    )


def serve_activator(
    port: int, upstream_url: str, activator_id: str = "bench", listen_fd: int | None = None
) -> None:
    """One activator process; on ``listen_fd`` (a socket from a supervisor) when given."""
    import uvicorn
    import uvloop

    from activator.app import ActivatorConfig, build_activator
    from activator.http.server import uvicorn_config
    from torpor.bus.base import Endpoint, RevisionEndpoints
    from torpor.bus.memory import MemoryBus

    async def main() -> None:
        bus = MemoryBus()
        await bus.publish_services([bench_service()])
        await bus.publish_endpoints(
            RevisionEndpoints(f"{NAMESPACE}/{REVISION}", (Endpoint("r0", upstream_url),))
        )
        activator = build_activator(bus, ActivatorConfig(activator_id=activator_id))
        if os.environ.get("BENCH_PLAIN_UVICORN"):
            config = uvicorn_config(activator.app, "127.0.0.1", port, http="httptools", loop="none")
        else:
            config = uvicorn_config(activator.app, "127.0.0.1", port, loop="none")
        if os.environ.get("BENCH_GC_FREEZE"):
            import gc

            gc.freeze()
            gc.set_threshold(50_000, 20, 20)
        server = uvicorn.Server(config)
        async with activator.running():
            if listen_fd is None:
                await server.serve()
            else:
                await server.serve(sockets=[socket.socket(fileno=listen_fd)])

    uvloop.run(main())


def serve_activator_workers(
    workers: int, port: int, upstream_url: str, serve_one: Sequence[str]
) -> None:
    """``workers`` activators on one port under ``activator.http.workers``' supervisor.

    ``serve_one`` is the command that serves one activator (``serve_activator``) when given
    ``--serve-activator PORT URL --activator-id ID --listen-fd FD``: the benchmark's entry point.
    """
    from activator.http.workers import bind_listeners, run_workers

    def command(k: int, fd: int) -> list[str]:
        return [
            *serve_one,
            "--serve-activator", str(port), upstream_url,
            "--activator-id", f"bench-{k}",
            "--listen-fd", str(fd),
        ]  # fmt: skip

    sys.exit(run_workers(bind_listeners("127.0.0.1", port, workers), command))


@contextmanager
def process(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``args`` running once it listens on ``port``; SIGTERM (SIGKILL past 10 s) at the end."""
    proc = subprocess.Popen(args)
    try:
        wait_listening(port)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


@contextmanager
def nginx(port: int, upstream_port: int) -> Iterator[int]:
    with tempfile.TemporaryDirectory(prefix="torpor-nginx-") as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, upstream=upstream_port))
        extra = ["-g", "user root;"] if os.geteuid() == 0 else []
        with process([NGINX, "-p", tmp, "-c", str(conf), *extra], port) as master:
            yield master.pid


def wait_activator_ids(base: str, ids: set[str], timeout_s: float = 30.0) -> None:
    """Until fresh connections to ``base`` have reached every activator in ``ids``."""
    import httpx

    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while seen != ids:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sorted(seen)} of {sorted(ids)} answered at {base}")
        try:
            seen.add(httpx.get(f"{base}/healthz", timeout=5).json()["activator"])
        except httpx.HTTPError:
            time.sleep(0.05)
