"""The overhead benchmark's report: ratios against nginx, and the Markdown beside the JSON."""

from __future__ import annotations

from typing import Any

from harness.load.h2load import RATE_CONNECTIONS
from harness.overhead.targets import WORKERS


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def ratios(rows: list[dict[str, Any]], concurrencies: list[int]) -> list[dict[str, Any]]:
    """Per workload and closed-loop concurrency: activator (and workers) against nginx."""
    out = []
    for workload in ("json", "sse"):
        for connections in concurrencies:
            by = {
                r["target"]: r
                for r in rows
                if r["workload"] == workload and r["concurrency"] == connections
            }
            a, n, w = by["activator"], by["nginx"], by.get(WORKERS)
            out.append(
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
    return out


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
