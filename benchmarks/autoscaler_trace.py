"""Replay a real LLM trace, split across N services, under torpor's policy and Knative's KPA.

    flock /tmp/torpor-cpu.lock .venv/bin/python benchmarks/autoscaler_trace.py
    .venv/bin/python benchmarks/autoscaler_trace.py --trace other.csv --services 1,8 --out /tmp/t

The trace is any CSV in the Azure LLM inference schema (``TIMESTAMP,ContextTokens,
GeneratedTokens``; ``.gz`` too); by default the hour of Azure's production conversation service in
``traces/`` (CC-BY 4.0, ``traces/README.md``). It is split across N services with Zipf-like
popularity (seeded, ``harness.trace.azure.split``), so most services see gaps and scale to zero,
and every service is replayed on its own replicas under:

- **torpor**, its defaults (``metric: llm``), through the product's own ``decide`` and ``plan``;
- **KPA defaults**, Knative's KPA as Knative implements it (``harness.trace.kpa``);
- **every KPA of a small grid** (``kpa_grid`` in ``autoscaler_trace_params.json``: target,
  stable window, scale-down-delay), and the best of it by ``best_kpa``'s rule.

The replica is the tiny model on the real vLLM CPU engine with its KV cache capped at 256 blocks
(a real model's token count): decode throughput, max_num_seqs, KV blocks, prefill cost per token
and cold starts all read from ``results/`` (``replica_throughput*.json``, ``coldstart.json``), see
``harness.trace.replica`` for the model and its assumptions. Prints per N: over-target waits,
replica-seconds and cold starts of each policy; writes ``autoscaler_trace.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.trace.azure import TraceRequest, read_trace, split
from harness.trace.kpa import KpaConfig
from harness.trace.policies import KpaPolicy, Policy, TorporPolicy
from harness.trace.replica import ReplicaModel
from harness.trace.sim import ServiceRun, simulate
from harness.trace.verdict import best_kpa, frontier_waits_at, summarise, verdict
from torpor.spec import AutoscalingSpec

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PARAMS = HERE / "autoscaler_trace_params.json"
TORPOR = "torpor (defaults)"
KPA_DEFAULT = "KPA defaults"


# -- the replica, from measurements ---------------------------------------------------------------


def fit_prefill(points: list[dict[str, Any]], from_tokens: int) -> float:
    """Seconds per prompt token: least-squares slope over the prompts of at least
    ``from_tokens`` (below that a step's fixed cost dominates and the slope is noise)."""
    xs = [float(p["prompt_tokens"]) for p in points if p["prompt_tokens"] >= from_tokens]
    ys = [float(p["seconds"]) for p in points if p["prompt_tokens"] >= from_tokens]
    if len(xs) < 2:
        raise ValueError("need at least two prefill points to fit a slope")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def load_replica(
    cfg: dict[str, Any], results: Path, warm: bool = False, slowdown: float = 1.0
) -> tuple[ReplicaModel, dict[str, Any]]:
    """The simulated replica, every number from a measurement on the real engine; ``slowdown``
    other than 1 divides its decode throughput and multiplies its prefill cost (ASSUMED)."""
    dec = json.loads((results / cfg["decode"]).read_text())
    pre = json.loads((results / cfg["prefill"]).read_text())
    cold = json.loads((results / cfg["coldstart"]).read_text())
    variant = cfg["warm_variant"] if warm else cfg["coldstart_variant"]
    colds = tuple(r["first_token_s"] for r in cold["runs"] if r["variant"] == variant)
    kv = dec["kv_cache"]
    model = ReplicaModel(
        decode=tuple(
            (float(r["batch"]), float(r["tokens_per_s"]) / slowdown) for r in dec["throughput"]
        ),
        prefill_s_per_token=fit_prefill(pre["prefill"], int(cfg["prefill_fit_from_tokens"]))
        * slowdown,
        max_num_seqs=int(dec["max_num_seqs"]),
        kv_blocks=int(kv["num_gpu_blocks"]) - 1,  # vLLM keeps one block back as its null block
        block_tokens=int(kv["block_size"]),
        token_budget=int(pre["meta"]["max_num_batched_tokens"]),
        cold_start_s=colds,
    )
    sources = {
        "decode": f"measured: results/{cfg['decode']} (batch sweep, KV cache capped at "
        f"{kv['num_gpu_blocks']} blocks of {kv['block_size']} tokens)",
        "prefill_s_per_token": f"measured: results/{cfg['prefill']} (slope over prompts >= "
        f"{cfg['prefill_fit_from_tokens']} tokens)",
        "max_num_seqs": f"measured: results/{cfg['decode']} (vLLM's own config)",
        "kv_blocks": f"measured: results/{cfg['decode']} (vLLM's cache_config, less its null "
        "block)",
        "token_budget": f"measured: results/{cfg['prefill']} (max_num_batched_tokens)",
        "cold_start_s": f"measured: results/{cfg['coldstart']} runs of '{variant}' "
        "(torpor up to first token), drawn in turn",
    }
    if slowdown != 1.0:
        for key in ("decode", "prefill_s_per_token"):
            sources[key] = f"ASSUMED: {slowdown:g}x slower than " + sources[key]
    return model, sources


ASSUMPTIONS = [
    "Decode throughput depends on the batch only, as measured at short contexts; "
    "results/replica_throughput_prefill.json measured 6757 tokens/s at batch 32 and a "
    "1024-token context against about 8000 at short ones, so long contexts decode ~15-20% "
    "slower than modelled.",
    "Prefill is linear in prompt tokens (the measured slope), chunked into vLLM's token budget "
    "beside the decoding sequences, oldest request first.",
    "KV cache: whole blocks per sequence, a request admitted only when its blocks fit; a "
    "sequence that cannot grow preempts the newest running one, which recomputes its prompt "
    "and output so far (vLLM V1's recompute preemption).",
    "Cold start: the measured torpor-up cold starts of the tiny model, drawn in turn; the same "
    "replica and the same draws for every policy. Knative's queue-proxy drain period after a "
    "pod is removed is not charged to KPA (it would only add to KPA's replica-seconds).",
    "Routing: both front doors send a request to the serving replica with the least work "
    "(Knative's activator picks the better of two at random); requests held while none serves "
    "are released in arrival order.",
    "The services of a split do not share hardware: each scales on its own replicas.",
]


# -- one comparison ------------------------------------------------------------------------------


def kpa_grid(grid: dict[str, list[float]]) -> dict[str, KpaConfig]:
    configs = {}
    for target, window, delay in itertools.product(
        grid["target"], grid["stable_window_s"], grid["scale_down_delay_s"]
    ):
        cfg = KpaConfig(target=target, stable_window_s=window, scale_down_delay_s=delay)
        configs[f"KPA {cfg.label()}"] = cfg
    return configs


def replay(
    policy_of: dict[str, Any],
    services: list[list[TraceRequest]],
    model: ReplicaModel,
    end_s: float,
    timeline_for: int | None = None,
) -> dict[str, list[ServiceRun]]:
    out: dict[str, list[ServiceRun]] = {}
    for name, make in policy_of.items():
        runs = []
        for k, reqs in enumerate(services):
            policy: Policy = make(name)
            runs.append(
                simulate(
                    policy,
                    reqs,
                    model,
                    end_s=end_s,
                    cold_start_offset=k,
                    timeline=timeline_for == k,
                )
            )
        out[name] = runs
    return out


def torpor_policy(name: str) -> Policy:
    return TorporPolicy(name, AutoscalingSpec(initial_scale=0))


def kpa_policy(cfg: KpaConfig) -> Any:
    return lambda name: KpaPolicy(name, cfg)


def run_all(
    trace: list[TraceRequest],
    p: dict[str, Any],
    model: ReplicaModel,
    counts: list[int],
    log: bool = True,
) -> dict[str, Any]:
    target = float(p["wait_target_s"])
    end = trace[-1].arrival
    grid = kpa_grid(p["kpa_grid"])
    default = KpaConfig()
    per_n: dict[str, Any] = {}
    timelines: dict[str, Any] = {}
    for n in counts:
        t0 = time.perf_counter()
        services = split(trace, n, int(p["split_seed"]), float(p["zipf_s"]))
        policies: dict[str, Any] = {TORPOR: torpor_policy, KPA_DEFAULT: kpa_policy(default)}
        policies |= {name: kpa_policy(cfg) for name, cfg in grid.items() if cfg != default}
        plot_n, plot_k = p["plotted"]["services"], p["plotted"]["service"]
        plotted = plot_k if n == plot_n else None
        runs = replay(policies, services, model, end, timeline_for=plotted)
        sums = {name: summarise(r, target) for name, r in runs.items()}
        grid_sums = {name: s for name, s in sums.items() if name != TORPOR}
        best = best_kpa(sums[TORPOR], grid_sums)
        fewest = min(
            grid_sums, key=lambda x: (grid_sums[x].over_target, grid_sums[x].replica_seconds)
        )
        per_n[str(n)] = {
            "services": n,
            "requests_per_service": [len(s) for s in services],
            "services_with_requests": sum(1 for s in services if s),
            "summary": {name: asdict(s) for name, s in sums.items()},
            "best_kpa": best,
            "fewest_waits_kpa": fewest,
            "verdict_vs_best_kpa": verdict(sums[TORPOR], sums[best]),
            "kpa_frontier_waits_at_torpor_replica_seconds": frontier_waits_at(
                grid_sums, sums[TORPOR].replica_seconds
            ),
            "verdict_vs_kpa_defaults": verdict(sums[TORPOR], sums[KPA_DEFAULT]),
            "seconds_to_simulate": round(time.perf_counter() - t0, 1),
        }
        if plotted is not None:
            timelines = {name: runs[name][plot_k].timeline for name in (TORPOR, best, KPA_DEFAULT)}
            timelines["_best"] = best
            timelines["_title"] = (
                f"service {plot_k} of {n} ({len(services[plot_k])} requests), simulated"
            )
        if log:
            print(f"N={n}: {per_n[str(n)]['seconds_to_simulate']} s", file=sys.stderr, flush=True)
    return {"per_n": per_n, "timelines": timelines, "grid": {n: asdict(c) for n, c in grid.items()}}


# -- report ----------------------------------------------------------------------------------------


def table(per_n: dict[str, Any], target: float) -> list[str]:
    lines = []
    for n, row in per_n.items():
        best = row["best_kpa"]
        v = row["verdict_vs_best_kpa"]
        lines += [
            f"#### N = {n} services ({row['services_with_requests']} with requests)",
            "",
            f"| policy | requests | over {target:g} s | of them at zero | p50 wait s | "
            "p99 wait s | replica-seconds | cold starts | preemptions |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        shown: dict[str, list[str]] = {}
        for name, tag in (
            (TORPOR, ""),
            (KPA_DEFAULT, "KPA defaults"),
            (best, "best KPA"),
            (row["fewest_waits_kpa"], "fewest waits of the grid"),
        ):
            if tag:
                shown.setdefault(name, []).append(tag)
            else:
                shown.setdefault(name, [])
        for name, tags in shown.items():
            s = row["summary"][name]
            label = name if name == TORPOR else name + " (" + ", ".join(tags) + ")"
            if name == KPA_DEFAULT:
                label = ", ".join(tags)
            lines.append(
                f"| {label} | {s['requests']} | {s['over_target']} | "
                f"{s['over_target_at_zero']} | {s['wait_p50_s']} | {s['wait_p99_s']} | "
                f"{s['replica_seconds']} | {s['cold_starts']} | {s['preemptions']} |"
            )
        lines += [
            "",
            f"torpor / best KPA: over-target waits {v['over_target_ratio']}, replica-seconds "
            f"{v['replica_seconds_ratio']}: goal **{'met' if v['met'] else 'NOT met'}**.",
            "",
        ]
        at = row["kpa_frontier_waits_at_torpor_replica_seconds"]
        if at is not None:
            ratio = f"{row['summary'][TORPOR]['over_target'] / at:.2f}" if at else "n/a"
            lines += [
                f"The grid's frontier interpolated to torpor's replica-seconds: {at:.0f} "
                f"over-target waits (torpor / that: {ratio}).",
                "",
            ]
    return lines


def grid_table(per_n: dict[str, Any]) -> list[str]:
    ns = list(per_n)
    lines = [
        "| policy | " + " | ".join(f"N={n}: over target / replica-s" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
    ]
    for name in per_n[ns[0]]["summary"]:
        cells = [
            f"{per_n[n]['summary'][name]['over_target']} / "
            f"{per_n[n]['summary'][name]['replica_seconds']:.0f}"
            for n in ns
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def report(result: dict[str, Any]) -> list[str]:
    meta = result["meta"]
    target = meta["wait_target_s"]
    lines = [
        "# Autoscaler trace replay: torpor vs Knative's KPA (defaults and the best of a grid)",
        "",
        f"Trace: `{meta['trace']}` ({meta['trace_requests']} requests over "
        f"{meta['trace_seconds']:.0f} s), split across N services with Zipf-like popularity "
        f"(s = {meta['zipf_s']}, seed {meta['split_seed']}); each service scales on its own "
        f"replicas. Wait = arrival to first token; over target = wait > {target:g} s; "
        '"at zero" = arrived while no replica served. Goal (issue 15): torpor\'s over-target '
        "waits <= 0.5x the best KPA's at <= 1.0x its replica-seconds, for N >= 8. Best KPA: of "
        "the grid's Pareto frontier (no other setting has both fewer waits and fewer "
        "replica-seconds), the cheapest setting spending at least torpor's replica-seconds: "
        "the fewest waits a tuned KPA reaches on torpor's budget (if every frontier setting "
        "spends less than torpor, the frontier's fewest-waits setting).",
        "",
        f"KPA (`harness/trace/kpa.py`, Knative's own rules): grid of target "
        f"{meta['kpa_grid']['target']} (x 0.7 utilization), stable window "
        f"{meta['kpa_grid']['stable_window_s']} s, scale-down-delay "
        f"{meta['kpa_grid']['scale_down_delay_s']} s; every other setting Knative's default "
        "(panic window 10% at 200%, scale-to-zero grace 30 s, max scale-down rate 2). torpor: "
        "its defaults (metric llm, target 100 x 0.7, window 60 s, grace 30 s), through the "
        "product's `decide` and `plan`.",
        "",
        "Command: `" + meta["command"] + "`",
        "",
    ]
    for name, sc in result["scenarios"].items():
        lines += [f"## {name}", "", sc["about"], "", *table(sc["per_n"], target)]
        lines += ["### The whole grid", "", *grid_table(sc["per_n"]), ""]
        lines += ["### Where the replica's numbers come from", ""]
        lines += [f"- `{k}`: {v} ({sc['replica'][k]})" for k, v in sc["replica_sources"].items()]
        lines.append("")
    lines += ["## Assumptions of the replica model", ""]
    lines += [f"- {a}" for a in meta["assumptions"]] + [""]
    return lines


def plot(result: dict[str, Any], out: Path) -> None:
    """Replicas and waiting requests over time, torpor vs the best KPA: one column per scenario,
    the same service of the same split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = {n: sc for n, sc in result["scenarios"].items() if sc["timelines"]}
    if not scenarios:
        return
    fig, axes = plt.subplots(
        2, len(scenarios), figsize=(8 * len(scenarios), 6), sharex=True, squeeze=False
    )
    for col, (sname, sc) in enumerate(scenarios.items()):
        tls = sc["timelines"]
        names = [TORPOR, tls["_best"]]
        qtop = max(max((x[3] for x in tls[n]), default=0) for n in names)
        rtop = max(max((x[1] for x in tls[n]), default=0) for n in names)
        for row, name in enumerate(names):
            ax = axes[row][col]
            tl = tls[name]
            t = [x[0] for x in tl]
            ax.step(t, [x[1] for x in tl], where="post", label="replicas (all)")
            ax.step(t, [x[2] for x in tl], where="post", label="serving", lw=0.8)
            ax.set_ylim(0, rtop + 1)
            ax.set_ylabel("replicas")
            ax2 = ax.twinx()
            ax2.fill_between(
                t,
                [x[3] for x in tl],
                step="post",
                color="tab:red",
                alpha=0.3,
                label="requests waiting for a first token",
            )
            ax2.set_ylim(0, max(1, qtop) * 1.1)
            ax2.set_ylabel("waiting")
            ax.set_title(f"{sname}\n{name}: {tls['_title']}", fontsize=8)
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=7)
        axes[-1][col].set_xlabel("seconds into the trace")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=None, help="CSV in the Azure schema")
    parser.add_argument("--services", default=None, help="N values, e.g. 1,8,64")
    parser.add_argument("--params", type=Path, default=PARAMS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="issue 24's comparison (tiers, the KPA grid, the oracle; N=8,64 unless --services):"
        " write OUT, and OUT's .md and .png beside it",
    )
    parser.add_argument("--label", default=None, help="a name for the trace in the report")
    parser.add_argument("--synthetic", default=None, help="how a synthetic trace was made")
    args = parser.parse_args()
    p = json.loads(args.params.read_text())
    path = args.trace or (HERE / p["trace"])
    trace = read_trace(path)
    if args.json is not None:
        tiers_main(args, p, path, trace)
        return
    counts = [int(x) for x in (args.services or ",".join(map(str, p["services"]))).split(",")]
    shown = f"benchmarks/{path.relative_to(HERE)}" if path.is_relative_to(HERE) else path.name
    result: dict[str, Any] = {
        "meta": {
            "command": "python benchmarks/autoscaler_trace.py"
            + (f" --trace {args.trace}" if args.trace else "")
            + (f" --services {args.services}" if args.services else ""),
            "trace": shown,
            "trace_requests": len(trace),
            "trace_seconds": trace[-1].arrival,
            "split_seed": p["split_seed"],
            "zipf_s": p["zipf_s"],
            "wait_target_s": p["wait_target_s"],
            "kpa_grid": p["kpa_grid"],
            "assumptions": ASSUMPTIONS,
        },
        "scenarios": {},
    }
    for sc in p["scenarios"]:
        slowdown = float(sc["slowdown"])
        model, sources = load_replica(p["replica"], RESULTS, slowdown=slowdown)
        print(f"{sc['name']}:", file=sys.stderr, flush=True)
        out = run_all(trace, p, model, counts)
        out["about"] = sc["about"]
        out["slowdown"] = slowdown
        out["replica"] = {
            "decode": [list(x) for x in model.decode],
            "prefill_s_per_token": model.prefill_s_per_token,
            "max_num_seqs": model.max_num_seqs,
            "kv_blocks": model.kv_blocks,
            "block_tokens": model.block_tokens,
            "token_budget": model.token_budget,
            "cold_start_s": list(model.cold_start_s),
        }
        out["replica_sources"] = sources
        result["scenarios"][sc["name"]] = out
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoscaler_trace.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = report(result)
    (args.out / "autoscaler_trace.md").write_text("\n".join(lines))
    if not args.no_plot:
        plot(result, args.out / "autoscaler_trace.png")
    print("\n".join(lines))


def tiers_main(args: argparse.Namespace, p: dict[str, Any], path: Path, trace: Any) -> None:
    """``--json OUT``: issue 24's keep-alive comparison (``autoscaler_trace_tiers``)."""
    import autoscaler_trace_tiers as at

    counts = [int(x) for x in (args.services or "8,64").split(",")]
    model, sources = load_replica(p["replica"], RESULTS)
    tiers = at.tier_model(RESULTS, float(p["wait_target_s"]))
    shown = f"benchmarks/{path.relative_to(HERE)}" if path.is_relative_to(HERE) else path.name
    out = at.run_tiers(trace, p, model, tiers, counts)
    out["meta"] = {
        "command": "python benchmarks/autoscaler_trace.py"
        + (f" --trace {args.trace}" if args.trace else "")
        + (f" --services {args.services}" if args.services else "")
        + (f" --label '{args.label}'" if args.label else "")
        + (f" --synthetic '{args.synthetic}'" if args.synthetic else "")
        + f" --json {args.json}",
        "label": args.label or shown,
        "trace": shown,
        "synthetic": args.synthetic,
        "trace_requests": len(trace),
        "trace_seconds": trace[-1].arrival,
        "split_seed": p["split_seed"],
        "zipf_s": p["zipf_s"],
        "wait_target_s": p["wait_target_s"],
        "tiers": {
            "cold_start_s (results/coldstart.json torpor_plain)": list(tiers.cold_start_s),
            "standby_start_s (results/coldstart.json torpor_warm)": list(tiers.standby_start_s),
            "wake_s (results/coldstart_suspended.json torpor_suspended)": list(tiers.wake_s),
        },
        "replica_sources": sources,
        "kpa_grid": at.GRID,
        "wait_values": at.WAIT_VALUES,
        "assumptions": at.ASSUMPTIONS,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    lines = at.report(out)
    args.json.with_suffix(".md").write_text("\n".join(lines))
    if not args.no_plot:
        at.plot(out, args.json.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
