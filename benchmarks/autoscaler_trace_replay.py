"""A slice of the real trace through ``torpor up`` with real vLLM tiny replicas, under both
policies in one run, beside what the trace simulator predicts for the same slice.

    flock /tmp/torpor-cpu.lock .venv/bin/python benchmarks/autoscaler_trace_replay.py

One service of a Zipf split of the trace (``replay`` in ``autoscaler_trace_params.json``: which
N, which service, which window, how much faster), sent at its own times to two services deployed
side by side on one platform: ``metric: llm`` (torpor's defaults) and ``metric: concurrency``
(Knative's KPA rules in torpor's autoscaler), both at most ``max_scale`` replicas of the tiny
model with the KV cache capped as the simulated replica's is (``--num-gpu-blocks-override 256``).
Each request is a streamed completion of its prompt length (random token ids, clipped to the
model's context) and its output length (``ignore_eos``); its wait is the client's time to the
first streamed token. Replicas are read from the control API once a second (replica-seconds,
cold starts). The simulator replays the same requests through the same product policies
(``harness.trace.policies.TorporPolicy`` with each spec) and the measured replica model; the
results file holds both and the error of each figure.

Writes ``results/autoscaler_trace_replay.{json,md}``. Takes about ``length / speedup`` + 3
minutes; the two services share the machine's cores, which the simulator does not model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from autoscaler_trace import PARAMS, RESULTS, load_replica, summarise

from harness.manifests import TINY_CHAT
from harness.platform import Control, Platform
from harness.sse import sse_lines
from harness.trace.azure import TraceRequest, read_trace, split, window
from harness.trace.policies import TorporPolicy
from harness.trace.sim import simulate
from torpor.spec import AutoscalingSpec

HERE = Path(__file__).resolve().parent
CONTEXT = 2048  # the tiny model's max_model_len


def manifest(directory: Path, name: str, metric: str, max_scale: int) -> Path:
    text = TINY_CHAT.read_text()
    text = text.replace("name: tiny-chat", f"name: {name}")
    text = text.replace("--served-model-name=tiny-chat", f"--served-model-name={name}")
    # Torpor's defaults apart from the metric: drop the demo's short window, grace and target.
    text = text.replace('        autoscaling.knative.dev/target: "4"\n', "")
    text = text.replace('        autoscaling.knative.dev/window: "10s"\n', "")
    text = text.replace('        torpor.dev/scale-to-zero-grace-period: "10s"\n', "")
    text = text.replace(
        'autoscaling.knative.dev/min-scale: "0"',
        f'autoscaling.knative.dev/min-scale: "0"\n'
        f'        autoscaling.knative.dev/max-scale: "{max_scale}"\n'
        f'        autoscaling.knative.dev/metric: "{metric}"',
    )
    text = text.replace("--max-model-len=512", f"--max-model-len={CONTEXT}")
    text = text.replace(
        "- --enforce-eager", "- --enforce-eager\n            - --num-gpu-blocks-override=256"
    )
    for needle in ("max-scale", "metric", "num-gpu-blocks-override", f"={CONTEXT}"):
        assert needle in text, needle
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def clip(reqs: list[TraceRequest]) -> list[TraceRequest]:
    """Fit each request in the tiny model's context: outputs at most 512, prompt the rest."""
    out = []
    for r in reqs:
        o = max(1, min(r.output, 512))
        out.append(TraceRequest(r.arrival, max(1, min(r.prompt, CONTEXT - o - 8)), o))
    return out


async def send(
    client: httpx.AsyncClient, url: str, model: str, r: TraceRequest, ids: list[int]
) -> dict[str, Any]:
    body = {
        "model": model,
        "prompt": ids,
        "max_tokens": r.output,
        "ignore_eos": True,
        "stream": True,
        "temperature": 0.0,
    }
    t0 = time.monotonic()
    first: float | None = None
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return {"ok": False, "error": f"{resp.status_code}: {resp.text[:200]}"}
            async for line in sse_lines(resp):
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:  # an error event inside a 200 stream
                    return {"ok": False, "error": str(event["error"])[:200]}
                if first is None and event.get("choices"):
                    first = time.monotonic() - t0
        return {"ok": first is not None, "wait_s": first, "total_s": time.monotonic() - t0}
    except httpx.HTTPError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


async def watch(
    control: Control, names: list[str], stop: asyncio.Event, out: dict[str, Any]
) -> None:
    """Once a second: each service's replicas (starting, ready, draining)."""
    last: dict[str, int] = dict.fromkeys(names, 0)
    t_last = time.monotonic()
    while not stop.is_set():
        rows = {r["service"]: r for r in (await control.status())["revisions"]}
        now = time.monotonic()
        for n in names:
            row = rows.get(n, {})
            count = sum(
                int(row.get(k, 0) or 0)
                for k in ("ready_replicas", "starting_replicas", "draining_replicas")
            )
            live = int(row.get("ready_replicas", 0) or 0) + int(
                row.get("starting_replicas", 0) or 0
            )
            o = out[n]
            o["replica_seconds"] += last[n] * (now - t_last)
            o["cold_starts"] += max(0, live - o["_live"])
            o["_live"] = live
            o["timeline"].append((round(now - out["_t0"], 1), count, live))
            last[n] = count
        t_last = now
        await asyncio.sleep(1.0)


async def run_real(
    home: Path, reqs: list[TraceRequest], max_scale: int, tail_s: float, seed: int
) -> dict[str, Any]:
    names = {"llm": "replay-llm", "concurrency": "replay-kpa"}
    rng = random.Random(seed)
    ids = [[rng.randint(1, 500) for _ in range(r.prompt)] for r in reqs]
    with Platform.start(home, timeout_s=120) as platform:
        async with Control(platform) as control:
            for metric, name in names.items():
                await control.deploy(manifest(home, name, metric, max_scale))
            out: dict[str, Any] = {
                n: {"replica_seconds": 0.0, "cold_starts": 0, "_live": 0, "timeline": []}
                for n in names.values()
            }
            stop = asyncio.Event()
            out["_t0"] = time.monotonic()
            watcher = asyncio.create_task(watch(control, list(names.values()), stop, out))
            t0 = out["_t0"]
            async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:

                async def one(i: int, name: str) -> dict[str, Any]:
                    await asyncio.sleep(max(0.0, reqs[i].arrival - (time.monotonic() - t0)))
                    url = f"{platform.url}/default/{name}/v1/completions"
                    return await send(client, url, name, reqs[i], ids[i])

                tasks = {
                    name: [asyncio.create_task(one(i, name)) for i in range(len(reqs))]
                    for name in names.values()
                }
                results = {n: await asyncio.gather(*ts) for n, ts in tasks.items()}
            # Until both are back at zero (or the tail bound): replica-seconds include the tail.
            deadline = time.monotonic() + tail_s
            while time.monotonic() < deadline:
                rows = {r["service"]: r for r in (await control.status())["revisions"]}
                if all(
                    rows.get(n, {}).get("ready_replicas", 0) == 0
                    and rows.get(n, {}).get("starting_replicas", 0) == 0
                    and rows.get(n, {}).get("draining_replicas", 0) == 0
                    for n in names.values()
                ):
                    break
                await asyncio.sleep(1.0)
            stop.set()
            await watcher
            elapsed = time.monotonic() - t0
    real: dict[str, Any] = {"elapsed_s": round(elapsed, 1)}
    for metric, name in names.items():
        o = out[name]
        ok = [r for r in results[name] if r["ok"]]
        real[metric] = {
            "requests": len(reqs),
            "answered": len(ok),
            "errors": [r["error"] for r in results[name] if not r["ok"]][:5],
            "waits_s": [round(r["wait_s"], 3) for r in results[name] if r["ok"]],
            "replica_seconds": round(o["replica_seconds"], 1),
            "cold_starts": o["cold_starts"],
            "timeline": o["timeline"][::5],
        }
    return real


def predict(reqs: list[TraceRequest], p: dict[str, Any], max_scale: int) -> dict[str, Any]:
    model, _ = load_replica(p["replica"], RESULTS)
    out: dict[str, Any] = {}
    for metric in ("llm", "concurrency"):
        spec = AutoscalingSpec(initial_scale=0, metric=metric, max_scale=max_scale)
        run = simulate(TorporPolicy(metric, spec), reqs, model, end_s=reqs[-1].arrival)
        out[metric] = {
            **asdict(summarise([run], float(p["wait_target_s"]))),
            "waits_s": [round(w, 3) for w in run.waits],
        }
    return out


def error(real: dict[str, Any], sim: dict[str, Any], target: float) -> dict[str, Any]:
    waits = sorted(real["waits_s"])
    over = sum(1 for w in waits if w > target)

    def rel(a: float, b: float) -> float | None:
        return round((b - a) / a, 3) if a else None

    p50 = waits[len(waits) // 2] if waits else 0.0
    return {
        "real_over_target": over,
        "sim_over_target": sim["over_target"],
        "real_wait_p50_s": p50,
        "sim_wait_p50_s": sim["wait_p50_s"],
        "real_wait_max_s": waits[-1] if waits else 0.0,
        "sim_wait_max_s": max(sim["waits_s"], default=0.0),
        "real_replica_seconds": real["replica_seconds"],
        "sim_replica_seconds": sim["replica_seconds"],
        "replica_seconds_error": rel(real["replica_seconds"], sim["replica_seconds"]),
        "real_cold_starts": real["cold_starts"],
        "sim_cold_starts": sim["cold_starts"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=PARAMS)
    parser.add_argument("--predict-only", action="store_true", help="the simulator's side only")
    args = parser.parse_args()
    p = json.loads(args.params.read_text())
    r = p["replay"]
    trace = read_trace(HERE / p["trace"])
    service = split(trace, int(r["services"]), int(p["split_seed"]), float(p["zipf_s"]))[
        int(r["service"])
    ]
    reqs = clip(window(service, float(r["start_s"]), float(r["length_s"]), float(r["speedup"])))
    max_scale = int(r["max_scale"])
    sim = predict(reqs, p, max_scale)
    slice_about = (
        f"service {r['service']} of a {r['services']}-way split (seed {p['split_seed']}), "
        f"trace seconds {r['start_s']}-{r['start_s'] + r['length_s']}, played "
        f"{r['speedup']}x faster: {len(reqs)} requests over {reqs[-1].arrival:.0f} s"
    )
    print(
        slice_about,
        json.dumps({k: {x: y for x, y in v.items() if x != "waits_s"} for k, v in sim.items()}),
        flush=True,
    )
    if args.predict_only:
        return
    from runtime.tinymodel import make_tiny_llama

    with tempfile.TemporaryDirectory(prefix="torpor-replay-") as tmp:
        home = Path(tmp)
        make_tiny_llama(home / "models" / "tiny-llama")
        real = asyncio.run(run_real(home, reqs, max_scale, float(r["tail_s"]), 0))
    target = float(p["wait_target_s"])
    result = {
        "meta": {
            "what": "a slice of the real trace through torpor up (real vLLM tiny replicas, KV "
            "cache capped at 256 blocks) under metric llm and metric concurrency in one run, "
            "beside the trace simulator's prediction for the same requests",
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "flock /tmp/torpor-cpu.lock python benchmarks/autoscaler_trace_replay.py",
            "slice": slice_about,
            "replay": r,
            "wait_target_s": target,
            "note": "Both services ran side by side on the same 2 CPU cores (shared with other "
            "work on the machine); the simulator gives each its own replica. Real waits are the "
            "client's time to the first streamed token, through the activator.",
        },
        "requests": [asdict(x) for x in reqs],
        "real": real,
        "simulated": sim,
        "error": {m: error(real[m], sim[m], target) for m in ("llm", "concurrency")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "autoscaler_trace_replay.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Real-platform replay vs the trace simulator",
        "",
        f"Slice: {slice_about}. {result['meta']['note']}",
        "",
        "| metric | over target real / sim | p50 wait s real / sim | max wait s real / sim | "
        "replica-s real / sim (error) | cold starts real / sim | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, e in result["error"].items():
        lines.append(
            f"| {m} | {e['real_over_target']} / {e['sim_over_target']} | "
            f"{e['real_wait_p50_s']} / {e['sim_wait_p50_s']} | {e['real_wait_max_s']} / "
            f"{e['sim_wait_max_s']} | {e['real_replica_seconds']} / {e['sim_replica_seconds']} "
            f"({e['replica_seconds_error']}) | {e['real_cold_starts']} / {e['sim_cold_starts']} "
            f"| {len(real[m]['errors'])} |"
        )
    (RESULTS / "autoscaler_trace_replay.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
