"""What the activator adds to a request, beside nginx as a reverse proxy, in one run.

The same upstream (uvicorn + uvloop + httptools, one process) serves two workloads:
``json`` (a fixed 90-byte JSON body) and ``sse`` (16 server-sent events, one body chunk each, then
``[DONE]``). Each is called four ways:

- ``direct``: the load generator talks to the upstream;
- ``nginx``: through Debian's nginx (``/usr/sbin/nginx``), started here on loopback with its own
  temporary config: one worker, upstream keepalive, ``proxy_buffering off`` so events stream;
- ``activator``: through torpor's activator (its own process, served the way
  ``activator.server.uvicorn_config`` says, its replica client, an in-process MemoryBus holding
  the route and the ready endpoint), path form ``/bench/echo/<path>``;
- ``activator-workers``: the same activator as N worker processes on one port (default 2), under
  ``activator.workers``' supervisor with one ``SO_REUSEPORT`` socket per worker, as
  ``python -m activator --workers N`` runs them.

Two kinds of load, because they answer different questions:

- **Closed loop** (``wrk -t1 -c N --latency``, Debian package ``wrk``): each connection sends its
  next request when the last answer arrives, as fast as the slowest hop allows. At 64 connections
  every proxy here runs at its full CPU, so what a proxy "adds" is mostly queueing behind its own
  CPU time per request: a throughput figure. Run at several concurrencies; the multi-worker
  activator at 64 and 128 only.
- **Fixed rate** (``h2load --h1 -c 64 --rps R/64``, Debian package ``nghttp2-client``): 64
  connections send R requests a second in all, whatever the answers do, at rates below the
  activator's saturation, which is how proxies' added latency is usually quoted (Nighthawk, wrk2,
  fortio ``-qps``). Latencies come from h2load's ``--log-file`` (per request: start time, status,
  microseconds to the end of the response). Two details of h2load matter here. Each connection's
  request clock starts when it connects; connected all at once (its ``-D`` duration mode), the 64
  connections fire in step, a burst of 64 requests every 64/R seconds, and the percentiles then
  measure bursts, not the proxy. So the run uses ``-n`` (R x duration requests) with connections
  opened a few per millisecond (``-r``, ``--rate-period``), which spreads their phases evenly over
  one period, as Nighthawk's evenly spaced requests are. And a request due while its connection
  still waits for the previous answer is sent when that answer arrives and timed from then, so a
  row whose achieved rate falls short of its target is past saturation and its latencies
  understate. Requests started in the first 0.25 s are left out (connections being opened).

Added latency = proxied percentile minus the direct percentile at the same concurrency or rate.
Client, proxy and upstream share this machine's cores, so only figures from one run are
comparable. Because of that sharing, each closed-loop row also gives the CPU time the proxy
process (all of its processes) spent per request, read from /proc: the figure that least depends
on what else the machine is doing.

It also measures the time from an endpoint being published to the first held request reaching the
replica (the activator's release path at zero), and, with ``--profile``, samples the (single)
activator under the 64-connection JSON load with py-spy and lists where its time goes.

Run: ``.venv/bin/python benchmarks/activator_overhead.py`` (writes
``benchmarks/results/activator_overhead.json`` and ``.md``; about 7 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NGINX = "/usr/sbin/nginx"
JSON_BODY = json.dumps({"id": "cmpl-0", "object": "text_completion", "text": "x" * 30}).encode()
SSE_EVENTS = 16
NAMESPACE, SERVICE, REVISION = "bench", "echo", "echo-00001"
WORKERS = "activator-workers"  # the target name of the multi-worker activator
RATE_CONNECTIONS = 64
RATE_TRIM_S = 0.25  # fixed-rate requests started this soon after the first are left out


# ---- the processes under test ---------------------------------------------------------------


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


def _bench_service() -> Any:
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
        await bus.publish_services([_bench_service()])
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


def serve_activator_workers(workers: int, port: int, upstream_url: str) -> None:
    """``workers`` activators on one port under ``activator.workers``' supervisor."""
    from activator.http.workers import bind_listeners, run_workers

    me = str(Path(__file__).resolve())

    def command(k: int, fd: int) -> list[str]:
        return [
            sys.executable, me,
            "--serve-activator", str(port), upstream_url,
            "--activator-id", f"bench-{k}",
            "--listen-fd", str(fd),
        ]  # fmt: skip

    sys.exit(run_workers(bind_listeners("127.0.0.1", port, workers), command))


# ---- orchestration ----------------------------------------------------------------------------


def medians(results: list[dict[str, float]]) -> dict[str, float]:
    """One cell from its repeated runs: the median of every figure, and how many runs."""
    return {
        "repeats": len(results),
        **{k: statistics.median(r[k] for r in results) for k in results[0]},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout_s}s")


@contextmanager
def process(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (nginx's worker), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            pids += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, connections: int, duration_s: float) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m is None:
            raise RuntimeError(f"no p{pct} in wrk output:\n{out}")
        result[f"p{pct}_ms"] = _ms(m.group(1))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    result["rps"] = float(rps.group(1)) if rps else 0.0
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    if socket_errors:
        print(f"  wrk socket errors at {url}: {socket_errors.group(1)}", file=sys.stderr)
    return result


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


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def h2load(url: str, total_rps: float, duration_s: float) -> dict[str, float]:
    """Fixed-rate load: ``RATE_CONNECTIONS`` HTTP/1.1 connections, ``total_rps`` req/s in all.

    See the module doc for why connections are opened a few per millisecond (``-r`` with a
    ``--rate-period`` of whole milliseconds) rather than all at once.
    """
    connections = RATE_CONNECTIONS
    if total_rps / connections > 100:
        # h2load's per-connection request timer ticks at most every 10 ms; faster than that, it
        # sends several requests per tick back to back.
        print(
            f"  h2load: {total_rps:g} req/s over {connections} connections is bursty",
            file=sys.stderr,
        )
    if total_rps >= 1000:
        per_period, period_ms = math.ceil(total_rps / 1000), 1
    else:
        per_period, period_ms = 1, max(1, round(1000 / total_rps))
    requests = max(connections, round(total_rps * duration_s))
    with tempfile.TemporaryDirectory(prefix="torpor-h2load-") as tmp:
        log_file = Path(tmp) / "requests.tsv"
        out = subprocess.run(
            [
                "h2load", "--h1",
                f"--clients={connections}",
                f"--requests={requests}",
                f"--rps={total_rps / connections:.6g}",
                f"--rate={per_period}",
                f"--rate-period={period_ms}ms",
                f"--log-file={log_file}",
                url,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout  # fmt: skip
        lines = log_file.read_text().splitlines()
    entries = [(int(start), int(status), int(us)) for start, status, us in
               (line.split("\t")[:3] for line in lines)]  # fmt: skip
    first = min((start for start, _, _ in entries), default=0)
    kept = [e for e in entries if e[0] >= first + RATE_TRIM_S * 1e6]
    latencies = sorted(us / 1e3 for _, status, us in kept if 200 <= status < 300)
    finished = re.search(r"finished in \S+, ([\d.]+) req/s", out)
    if not latencies or finished is None:
        raise RuntimeError(f"h2load measured nothing at {url}:\n{out}")
    return {
        "target_rps": total_rps,
        "achieved_rps": float(finished.group(1)),
        "requests": float(len(kept)),
        "failed": float(sum(1 for _, status, _ in entries if not 200 <= status < 300)),
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
    }


def measure(
    url: str, connections: int, duration_s: float, upstream_pid: int, proxy_pid: int | None
) -> dict[str, float]:
    """One wrk run after a short warm-up, with the CPU the proxy and upstream spent per request."""
    wrk(url, connections, 1)  # warm pools and caches
    up_cpu = cpu_seconds(upstream_pid)
    proxy_cpu = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    result = wrk(url, connections, duration_s)
    served = max(result["rps"] * duration_s, 1.0)
    result["upstream_cpu_us_per_req"] = (cpu_seconds(upstream_pid) - up_cpu) / served * 1e6
    result["proxy_cpu_us_per_req"] = (
        (cpu_seconds(proxy_pid) - proxy_cpu) / served * 1e6 if proxy_pid else 0.0
    )
    return result


def measure_release(samples: int) -> dict[str, float]:
    """Endpoint published -> first held request arrives at the replica (ms), in one process."""
    import uvicorn
    import uvloop

    from activator.app import ActivatorConfig, build_activator
    from torpor.bus.base import Endpoint, RevisionEndpoints
    from torpor.bus.memory import MemoryBus

    async def run() -> list[float]:
        arrived: asyncio.Future[float] | None = None

        async def replica(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            if arrived is not None and not arrived.done():
                arrived.set_result(time.perf_counter())
            await upstream_app(scope, receive, send)

        async def serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
            port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(
                    app,
                    host="127.0.0.1",
                    port=port,
                    loop="none",
                    http="httptools",
                    lifespan="off",
                    access_log=False,
                    log_level="warning",
                )
            )
            task = asyncio.create_task(server.serve())
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                await asyncio.sleep(0.01)
            return server, task, port

        import httpx

        bus = MemoryBus()
        await bus.publish_services([_bench_service()])
        activator = build_activator(bus, ActivatorConfig(activator_id="bench"))
        key = f"{NAMESPACE}/{REVISION}"
        up_server, up_task, up_port = await serve(replica)
        results: list[float] = []
        async with activator.running(), httpx.AsyncClient() as client:
            act_server, act_task, act_port = await serve(activator.app)
            for _ in range(samples):
                await bus.publish_endpoints(RevisionEndpoints(key, ()))
                arrived = asyncio.get_running_loop().create_future()
                call = asyncio.create_task(
                    client.get(f"http://127.0.0.1:{act_port}/{NAMESPACE}/{SERVICE}/json")
                )
                while not any(s.queued for s in activator.stats()):  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                published = time.perf_counter()
                await bus.publish_endpoints(
                    RevisionEndpoints(key, (Endpoint("r0", f"http://127.0.0.1:{up_port}"),))
                )
                results.append((await arrived - published) * 1e3)
                (await call).raise_for_status()
            act_server.should_exit = True
            await act_task
        up_server.should_exit = True
        await up_task
        return results

    values = uvloop.run(run())
    values.sort()
    return {
        "samples": len(values),
        "p50_ms": statistics.median(values),
        "p99_ms": values[min(len(values) - 1, int(len(values) * 0.99))],
        "max_ms": values[-1],
    }


def profile_activator(pid: int, url: str, connections: int, duration_s: float) -> dict[str, Any]:
    """Sample the activator with py-spy under load; top functions by own and inclusive time."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "stacks.txt"
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "500",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--duration",
                str(int(duration_s) + 1),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        wrk(url, connections, duration_s)
        spy.wait()
        own: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        areas: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            count = int(count_text)
            frames = [f for f in stack.split(";") if f]
            if not frames:
                continue
            total += count
            own[_short(frames[-1], keep_line=True)] += count
            for name in {_short(f) for f in frames}:
                inclusive[name] += count
            areas[_area(frames)] += count

    def share(counter: collections.Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"where": k, "share": round(v / total, 3)} for k, v in counter.most_common(n)]

    for name, count in list(inclusive.items()):
        if count > 0.95 * total:  # the entry point and the loop: in every sample, says nothing
            del inclusive[name]
    return {
        "samples": total,
        "by_area": share(areas, 10),
        "top_self": share(own, 15),
        "top_inclusive": share(inclusive, 20),
    }


def _short(frame: str, keep_line: bool = False) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    m = re.match(r"(.*) \((.*?):(\d+)\)", frame)
    if not m:
        return frame
    function, path, line = m.groups()
    if keep_line:
        path = f"{path}:{line}"
    parts = Path(path).parts
    for anchor in ("site-packages", "lib"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1 :]
            break
    return f"{function} ({'/'.join(parts[-3:])})"


_AREAS = (
    ("activator's own code", re.compile(r"(^|[ (/])activator/(?!.*activator_overhead)")),
    ("uvicorn's HTTP server protocol", re.compile(r"uvicorn/")),
    ("prometheus_client", re.compile(r"prometheus_client/")),
    ("asyncio (tasks, futures, events)", re.compile(r"asyncio/")),
)


def _area(frames: list[str]) -> str:
    """Attribute a sample to the library its innermost Python frame is in.

    Time inside C code (uvloop's event loop, socket system calls, httptools' parser) shows up
    under the Python frame that called it: a transport write under the function that wrote.
    """
    leaf = frames[-1]
    for name, pattern in _AREAS:
        if pattern.search(leaf):
            return name
    if "runners.py" in leaf or "uvloop" in leaf:
        return "event loop (uvloop, in C: polling, reads)"
    return "other"


def run(args: argparse.Namespace) -> dict[str, Any]:
    up_port, nginx_port, act_port, workers_port = (free_port() for _ in range(4))
    py = sys.executable
    me = str(Path(__file__).resolve())
    targets = {
        "direct": f"http://127.0.0.1:{up_port}",
        "nginx": f"http://127.0.0.1:{nginx_port}",
        "activator": f"http://127.0.0.1:{act_port}/{NAMESPACE}/{SERVICE}",
        WORKERS: f"http://127.0.0.1:{workers_port}/{NAMESPACE}/{SERVICE}",
    }
    rows: list[dict[str, Any]] = []
    rate_rows: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    load_before = os.getloadavg()
    with (
        process([py, me, "--serve-upstream", str(up_port)], up_port) as up_proc,
        nginx(nginx_port, up_port) as nginx_pid,
        process(
            [py, me, "--serve-activator", str(act_port), targets["direct"]], act_port
        ) as act_proc,
        process(
            [
                py, me,
                "--serve-activator", str(workers_port), targets["direct"],
                "--serve-workers", str(args.workers),
            ],
            workers_port,
        ) as workers_proc,
    ):  # fmt: skip
        wait_activator_ids(
            f"http://127.0.0.1:{workers_port}", {f"bench-{k}" for k in range(args.workers)}
        )
        pids = {
            "direct": None,
            "nginx": nginx_pid,
            "activator": act_proc.pid,
            WORKERS: workers_proc.pid,
        }
        samples: dict[tuple[str, int, str], list[dict[str, float]]] = {}
        # Repeats go outermost, so a burst of load from something else on the machine lands on
        # one sample of every cell rather than on every sample of one cell; the median is kept.
        for repeat in range(args.repeat):
            for workload, path in (("json", "/json"), ("sse", "/sse")):
                for connections in args.concurrency:
                    base: dict[str, float] = {}
                    for target, prefix in targets.items():
                        if target == WORKERS and connections not in args.workers_concurrency:
                            continue
                        result = measure(
                            prefix + path, connections, args.duration, up_proc.pid, pids[target]
                        )
                        if target == "direct":
                            base = result
                        result["added_p50_ms"] = result["p50_ms"] - base["p50_ms"]
                        result["added_p99_ms"] = result["p99_ms"] - base["p99_ms"]
                        samples.setdefault((workload, connections, target), []).append(result)
                        print(
                            f"[{repeat + 1}/{args.repeat}] {workload:4} c={connections:<4} "
                            f"{target:17} {result['rps']:9.0f} req/s "
                            f"p50 {result['p50_ms']:6.2f} ms p99 {result['p99_ms']:6.2f} ms "
                            f"proxy cpu {result['proxy_cpu_us_per_req']:6.1f} us/req",
                            file=sys.stderr,
                        )
        for (workload, connections, target), results in samples.items():
            rows.append(
                {
                    "workload": workload,
                    "concurrency": connections,
                    "target": target,
                    **medians(results),
                }
            )
        rate_samples: dict[tuple[str, float, str], list[dict[str, float]]] = {}
        for repeat in range(args.repeat):
            for workload, path, rates in (
                ("json", "/json", args.rates),
                ("sse", "/sse", args.sse_rates),
            ):
                for rate in rates:
                    base = {}
                    for target, prefix in targets.items():
                        result = h2load(prefix + path, rate, args.duration)
                        if target == "direct":
                            base = result
                        result["added_p50_ms"] = result["p50_ms"] - base["p50_ms"]
                        result["added_p99_ms"] = result["p99_ms"] - base["p99_ms"]
                        rate_samples.setdefault((workload, rate, target), []).append(result)
                        print(
                            f"[rate {repeat + 1}/{args.repeat}] {workload:4} {rate:6g}/s "
                            f"{target:17} {result['achieved_rps']:7.0f} req/s "
                            f"p50 {result['p50_ms']:6.2f} ms p99 {result['p99_ms']:6.2f} ms",
                            file=sys.stderr,
                        )
        for (workload, _, target), results in rate_samples.items():
            rate_rows.append(
                {
                    "workload": workload,
                    "target": target,
                    **medians(results),
                    "worst_added_p99_ms": max(r["added_p99_ms"] for r in results),
                }
            )
        if args.profile:
            profile = profile_activator(
                act_proc.pid, targets["activator"] + "/json", 64, args.duration
            )
    release = measure_release(args.release_samples)
    ratios = []
    for workload in ("json", "sse"):
        for connections in args.concurrency:
            by = {
                r["target"]: r
                for r in rows
                if r["workload"] == workload and r["concurrency"] == connections
            }
            a, n, w = by["activator"], by["nginx"], by.get(WORKERS)
            ratios.append(
                {
                    "workload": workload,
                    "concurrency": connections,
                    "rps_activator_over_nginx": a["rps"] / n["rps"] if n["rps"] else None,
                    "rps_workers_over_nginx": (
                        w["rps"] / n["rps"] if w is not None and n["rps"] else None
                    ),
                    "added_p50_activator_over_nginx": _ratio(a["added_p50_ms"], n["added_p50_ms"]),
                    "added_p99_activator_over_nginx": _ratio(a["added_p99_ms"], n["added_p99_ms"]),
                }
            )
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nginx": subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip(),
            "h2load": subprocess.run(
                ["h2load", "--version"], capture_output=True, text=True
            ).stdout.strip(),
        },
        "method": {
            "load_generator": "wrk -t1 -c<N> --latency",
            "fixed_rate_load_generator": (
                f"h2load --h1 -c{RATE_CONNECTIONS} -n<rate x duration> --rps <rate/"
                f"{RATE_CONNECTIONS}> -r<k> --rate-period=<ms> --log-file"
            ),
            "fixed_rate_trim_s": RATE_TRIM_S,
            "duration_s": args.duration,
            "repeats": args.repeat,
            "fixed_rate_repeats": 1,
            "upstream": "uvicorn+uvloop+httptools, 1 process",
            "activator": "activator.server.uvicorn_config, 1 process, MemoryBus",
            "activator_workers": args.workers,
            "nginx": "1 worker, upstream keepalive 256, proxy_buffering off",
            "sse_events": SSE_EVENTS,
            "json_bytes": len(JSON_BODY),
        },
        "rows": rows,
        "ratios": ratios,
        "fixed_rate_rows": rate_rows,
        "release_after_endpoint_ready": release,
        "profile": profile,
        "targets": {"added_p50_ms_at_64": 1.0, "added_p99_ms_at_64": 5.0, "rps_vs_nginx": 0.5},
    }


def profile_only(args: argparse.Namespace) -> dict[str, Any]:
    up_port, act_port = free_port(), free_port()
    me = str(Path(__file__).resolve())
    with (
        process([sys.executable, me, "--serve-upstream", str(up_port)], up_port),
        process(
            [sys.executable, me, "--serve-activator", str(act_port), f"http://127.0.0.1:{up_port}"],
            act_port,
        ) as act_proc,
    ):
        url = f"http://127.0.0.1:{act_port}/{NAMESPACE}/{SERVICE}/json"
        wrk(url, 64, 1)
        return profile_activator(act_proc.pid, url, 64, args.duration)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _meets(value: float, bound: float, *, at_least: bool = False) -> str:
    ok = value >= bound if at_least else value <= bound
    return "meets" if ok else "misses"


def _latency_verdict(row: dict[str, Any]) -> str:
    p50, p99 = row["added_p50_ms"], row["added_p99_ms"]
    return (
        f"added p50 {p50:.2f} ms ({_meets(p50, 1.0)} <= 1 ms), "
        f"p99 {p99:.2f} ms ({_meets(p99, 5.0)} <= 5 ms)"
    )


def _short_of_rate(row: dict[str, Any]) -> bool:
    return bool(row["achieved_rps"] < 0.95 * row["target_rps"])


def markdown(result: dict[str, Any]) -> str:
    method = result["method"]
    n_workers = method.get("activator_workers", 2)
    xn = f"activator x{n_workers}"
    lines = [
        "# Activator overhead",
        "",
        f"Generated {result['generated_at']} by `benchmarks/activator_overhead.py` on "
        f"{result['machine']['cpus']} CPUs ({result['machine']['nginx']}, "
        f"{result['machine'].get('h2load', 'h2load')}). "
        "Client, proxies and upstream share the machine's cores (load average "
        f"{result['load_average_before'][0]:.1f} before, {result['load_average_after'][0]:.1f} "
        "after, other work included): compare within this run. "
        f"`{xn}` is the activator as {n_workers} worker processes on one port "
        "(`activator.workers`, one SO_REUSEPORT socket each).",
        "",
        "Added latency = the proxied percentile minus the direct one at the same concurrency "
        "or rate.",
        "",
        "## Closed loop (saturation)",
        "",
        f"Load: `{method['load_generator']}`, {method['duration_s']} s per run, median of "
        f"{method['repeats']} runs per cell. Each connection sends its next request when the "
        "last answer arrives, so at 64 connections and more every proxy runs at full CPU and "
        "its added latency is mostly queueing behind its own CPU time per request. CPU us/req "
        "(from /proc) is the proxy's own CPU per request (all of its processes), the figure least "
        "moved by the machine's sharing.",
        "",
        "| workload | conc | direct req/s | direct p50 / p99 ms | nginx req/s | nginx added "
        "p50 / p99 ms | activator req/s | activator added p50 / p99 ms | act/nginx req/s "
        f"| {xn} req/s | {xn} added p50 / p99 ms | x{n_workers}/nginx req/s "
        f"| CPU us/req nginx / activator / x{n_workers} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = result["rows"]
    for ratio in result["ratios"]:
        w, c = ratio["workload"], ratio["concurrency"]
        by = {r["target"]: r for r in rows if r["workload"] == w and r["concurrency"] == c}
        d, n, a, m = by["direct"], by["nginx"], by["activator"], by.get(WORKERS)
        multi = (
            f"{m['rps']:.0f} | {m['added_p50_ms']:.2f} / {m['added_p99_ms']:.2f} | "
            f"{ratio['rps_workers_over_nginx']:.2f}"
            if m is not None
            else "- | - | -"
        )
        multi_cpu = f"{m['proxy_cpu_us_per_req']:.0f}" if m is not None else "-"
        lines.append(
            f"| {w} | {c} | {d['rps']:.0f} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | "
            f"{n['rps']:.0f} | {n['added_p50_ms']:.2f} / {n['added_p99_ms']:.2f} | "
            f"{a['rps']:.0f} | {a['added_p50_ms']:.2f} / {a['added_p99_ms']:.2f} | "
            f"{ratio['rps_activator_over_nginx']:.2f} | {multi} | "
            f"{n['proxy_cpu_us_per_req']:.0f} / {a['proxy_cpu_us_per_req']:.0f} / "
            f"{multi_cpu} |"
        )
    rate_rows = result.get("fixed_rate_rows", [])
    if rate_rows:
        lines += [
            "",
            "## Fixed rate (below saturation)",
            "",
            f"Load: `{method['fixed_rate_load_generator']}`: {RATE_CONNECTIONS} connections "
            "sending a fixed number of requests a second in all, whatever the answers do, their "
            f"phases spread evenly; {method['duration_s']} s per run, median of "
            f"{method['repeats']} runs per cell (in brackets: the worst run's added p99), requests "
            f"started in the first {method['fixed_rate_trim_s']} s left out. The rates are "
            "below what one activator process serves closed-loop on this machine (the table "
            "above), so these latencies are the proxy's own work per request plus what load it "
            "shares the cores with, not a queue of its own making. A rate marked * was not "
            "reached: past saturation, whose latencies understate (h2load times a request that "
            "waited for its connection from when it was sent).",
            "",
            "| workload | rate req/s | achieved req/s direct / nginx / activator / "
            f"x{n_workers} | direct p50 / p99 ms | nginx added p50 / p99 ms | activator added "
            f"p50 / p99 ms | {xn} added p50 / p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for w in ("json", "sse"):
            for rate in sorted({r["target_rps"] for r in rate_rows if r["workload"] == w}):
                by = {
                    r["target"]: r
                    for r in rate_rows
                    if r["workload"] == w and r["target_rps"] == rate
                }
                order = ("direct", "nginx", "activator", WORKERS)
                achieved = " / ".join(
                    f"{by[t]['achieved_rps']:.0f}{'*' if _short_of_rate(by[t]) else ''}"
                    for t in order
                    if t in by
                )
                added = [
                    f"{by[t]['added_p50_ms']:.2f} / {by[t]['added_p99_ms']:.2f}"
                    + (
                        f" ({by[t]['worst_added_p99_ms']:.2f})"
                        if "worst_added_p99_ms" in by[t]
                        else ""
                    )
                    if t in by
                    else "-"
                    for t in order[1:]
                ]
                d = by["direct"]
                lines.append(
                    f"| {w} | {rate:g} | {achieved} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | "
                    + " | ".join(added)
                    + " |"
                )
    lines += ["", "## Against the targets (64 concurrent)", ""]
    lines += [
        "Targets: added p50 <= 1 ms and p99 <= 5 ms at 64 concurrent requests; throughput at "
        "least half of nginx's (a closed-loop figure). Closed loop at 64 connections measures the "
        "proxy at saturation; fixed rate measures it below saturation.",
        "",
    ]
    for ratio in result["ratios"]:
        if ratio["concurrency"] != 64:
            continue
        w = ratio["workload"]
        by = {r["target"]: r for r in rows if r["workload"] == w and r["concurrency"] == 64}
        a, m = by["activator"], by.get(WORKERS)
        rps = ratio["rps_activator_over_nginx"]
        lines.append(
            f"- {w}, closed loop (saturation), activator: {_latency_verdict(a)}; "
            f"throughput {rps:.2f} of nginx's ({_meets(rps, 0.5, at_least=True)} >= 0.5)"
        )
        if m is not None:
            mrps = ratio["rps_workers_over_nginx"]
            lines.append(
                f"- {w}, closed loop (saturation), {xn}: {_latency_verdict(m)}; "
                f"throughput {mrps:.2f} of nginx's ({_meets(mrps, 0.5, at_least=True)} >= 0.5)"
            )
        for target, name in (("activator", "activator"), (WORKERS, xn)):
            for r in sorted(
                (r for r in rate_rows if r["workload"] == w and r["target"] == target),
                key=lambda r: float(r["target_rps"]),
            ):
                short = (
                    f" (rate not reached: {r['achieved_rps']:.0f} req/s, past saturation)"
                    if _short_of_rate(r)
                    else ""
                )
                lines.append(
                    f"- {w}, fixed rate {r['target_rps']:g} req/s, {name}: "
                    f"{_latency_verdict(r)}{short}"
                )
    lines += [
        "",
        "In the closed loop at 64 connections the activator is one Python process at full CPU, "
        "so what it adds is mostly queueing behind its own CPU time per request (the last "
        "column); the latency targets there follow from that cost, not from any wait in its "
        "logic (see the release time below and the profile). The fixed-rate rows show what it "
        "adds when it is not the bottleneck.",
    ]
    rel = result["release_after_endpoint_ready"]
    lines += [
        "",
        "## Release at zero",
        "",
        f"Endpoint published on the bus -> first held request at the replica, {rel['samples']} "
        f"samples: p50 {rel['p50_ms']:.2f} ms, p99 {rel['p99_ms']:.2f} ms, "
        f"max {rel['max_ms']:.2f} ms (target <= 10 ms).",
    ]
    profile = result.get("profile")
    if profile:
        lines += [
            "",
            f"## Where the activator's time goes (py-spy, {profile['samples']} samples, "
            "json at 64 connections)",
            "",
            "| innermost layer | share |",
            "|---|---:|",
        ]
        lines += [f"| {p['where']} | {p['share']:.1%} |" for p in profile["by_area"]]
        lines += ["", "| line (self) | share |", "|---|---:|"]
        lines += [f"| `{p['where']}` | {p['share']:.1%} |" for p in profile["top_self"]]
        lines += ["", "| function (inclusive) | share |", "|---|---:|"]
        lines += [f"| `{p['where']}` | {p['share']:.1%} |" for p in profile["top_inclusive"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-upstream", type=int, metavar="PORT")
    parser.add_argument("--serve-activator", nargs=2, metavar=("PORT", "UPSTREAM_URL"))
    parser.add_argument("--activator-id", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes of the multi-worker activator (the activator-workers rows)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument(
        "--workers-concurrency",
        type=int,
        nargs="+",
        default=[64, 128],
        help="closed-loop concurrencies that also measure the multi-worker activator",
    )
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[1000, 3000, 6000],
        help="fixed total rates (req/s over 64 connections) for the json workload",
    )
    parser.add_argument(
        "--sse-rates",
        type=float,
        nargs="+",
        default=[500, 1500, 3000],
        help="fixed total rates for the sse workload (each request is 17 events)",
    )
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3, help="median of this many runs per cell")
    parser.add_argument("--release-samples", type=int, default=50)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--profile-only",
        action="store_true",
        help="redo only the profile, into the existing results",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "activator_overhead")
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    if args.serve_activator:
        port, upstream_url = int(args.serve_activator[0]), args.serve_activator[1]
        if args.listen_fd is None and args.serve_workers > 1:
            serve_activator_workers(args.serve_workers, port, upstream_url)
        else:
            serve_activator(port, upstream_url, args.activator_id, args.listen_fd)
        return
    for tool in ("wrk", NGINX, "h2load"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install -y wrk nginx-light nghttp2-client)")
    if args.profile_only:
        result = json.loads(args.out.with_suffix(".json").read_text())
        result["profile"] = profile_only(args)
    else:
        result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
