"""What the activator adds to a request, beside nginx as a reverse proxy, in one run.

The same upstream (uvicorn + uvloop + httptools, one process) serves two workloads:
``json`` (a fixed 90-byte JSON body) and ``sse`` (16 server-sent events, one body chunk each, then
``[DONE]``). Each is called four ways:

- ``direct``: the load generator talks to the upstream;
- ``nginx``: through Debian's nginx (``/usr/sbin/nginx``), started here on loopback with its own
  temporary config: one worker, upstream keepalive, ``proxy_buffering off`` so events stream;
- ``activator``: through torpor's activator (its own process, served the way
  ``activator.http.server.uvicorn_config`` says, its replica client, an in-process MemoryBus holding
  the route and the ready endpoint), path form ``/bench/echo/<path>``;
- ``activator-workers``: the same activator as N worker processes on one port (default 2), under
  ``activator.http.workers``' supervisor with one ``SO_REUSEPORT`` socket per worker, as
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

The parts live in ``harness``: the processes under load in ``harness.overhead.targets``, the load
generators in ``harness.load`` (``wrk``, ``h2load``, ``cpu``), the release measurement and the
py-spy profile in ``harness.overhead.release`` and ``.profile``, the Markdown in
``harness.overhead.report``. This file runs them and keeps the command line; the processes it
starts run this file again with the ``--serve-*`` flags.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.load.cpu import cpu_seconds
from harness.load.h2load import RATE_CONNECTIONS, RATE_TRIM_S, h2load
from harness.load.wrk import wrk
from harness.overhead.profile import profile_activator
from harness.overhead.release import measure_release
from harness.overhead.report import markdown, ratios
from harness.overhead.targets import (
    JSON_BODY,
    NAMESPACE,
    NGINX,
    SERVICE,
    SSE_EVENTS,
    WORKERS,
    nginx,
    process,
    serve_activator,
    serve_activator_workers,
    serve_upstream,
    wait_activator_ids,
)
from harness.ports import free_port

RESULTS = Path(__file__).resolve().parent / "results"
ME = [sys.executable, str(Path(__file__).resolve())]  # how the processes under load are started


def medians(results: list[dict[str, float]]) -> dict[str, float]:
    """One cell from its repeated runs: the median of every figure, and how many runs."""
    return {
        "repeats": len(results),
        **{k: statistics.median(r[k] for r in results) for k in results[0]},
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    up_port, nginx_port, act_port, workers_port = (free_port() for _ in range(4))
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
        process([*ME, "--serve-upstream", str(up_port)], up_port) as up_proc,
        nginx(nginx_port, up_port) as nginx_pid,
        process(
            [*ME, "--serve-activator", str(act_port), targets["direct"]], act_port
        ) as act_proc,
        process(
            [
                *ME,
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
    ratio_rows = ratios(rows, args.concurrency)
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
        "ratios": ratio_rows,
        "fixed_rate_rows": rate_rows,
        "release_after_endpoint_ready": release,
        "profile": profile,
        "targets": {"added_p50_ms_at_64": 1.0, "added_p99_ms_at_64": 5.0, "rps_vs_nginx": 0.5},
    }


def profile_only(args: argparse.Namespace) -> dict[str, Any]:
    up_port, act_port = free_port(), free_port()
    with (
        process([*ME, "--serve-upstream", str(up_port)], up_port),
        process(
            [*ME, "--serve-activator", str(act_port), f"http://127.0.0.1:{up_port}"],
            act_port,
        ) as act_proc,
    ):
        url = f"http://127.0.0.1:{act_port}/{NAMESPACE}/{SERVICE}/json"
        wrk(url, 64, 1)
        return profile_activator(act_proc.pid, url, 64, args.duration)


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
            serve_activator_workers(args.serve_workers, port, upstream_url, ME)
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
