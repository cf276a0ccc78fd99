"""The cold-start report: medians per variant, the Markdown table, and the phase chart."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from harness.coldstart.variants import SEGMENTS, RunResult


def summarize(results: list[RunResult]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for v in dict.fromkeys(r.variant for r in results):
        rs = [r for r in results if r.variant == v]
        row = {
            "ready_s": statistics.median(r.ready_s for r in rs),
            "first_token_s": statistics.median(r.first_token_s for r in rs),
            # Ready (as whoever waits for it sees it) to the first token: for torpor_* the
            # activator learning of the replica, proxying, and the token itself.
            "ready_to_token_s": statistics.median(r.first_token_s - r.ready_s for r in rs),
            "runs": float(len(rs)),
        }
        for seg in SEGMENTS:
            vals = [r.phases[seg] for r in rs if seg in r.phases]
            if vals:
                row[seg] = statistics.median(vals)
        out[v] = row
    base = out.get("bare_vllm", {}).get("first_token_s")
    for row in out.values():
        if base:
            row["ratio_to_bare"] = round(row["first_token_s"] / base, 3)
    return out


CLOCKS = {
    "bare_vllm": "process spawn",
    "runtime_plain": "process spawn",
    "runtime_warm": "standby assignment",
    "torpor_plain": "request sent to the activator, revision at zero, warm pool 0",
    "torpor_warm": "request sent to the activator, revision at zero, a ready standby in the pool",
    "torpor_suspended": "request sent to the activator, the revision's only replica suspended",
}
TARGETS = (
    ("torpor_plain", 1.05, "(b) plain through the activator"),
    ("torpor_warm", 0.2, "(c) warm pool through the activator"),
    ("torpor_suspended", 0.02, "(d) suspended replica woken through the activator (issue 17)"),
)


def write_markdown(
    summary: dict[str, dict[str, float]],
    path: Path,
    meta: dict[str, str],
    title: str = "tiny model",
) -> None:
    lines = [
        f"# Cold start, {title} (to first token)",
        "",
        f"Machine: {meta['machine']}. Date: {meta['date']}. Runs per variant: {meta['runs']}, "
        "interleaved in one run. Medians, in seconds; phase columns are seconds since the "
        "variant's clock starts (below).",
        "",
        "| variant | first token | ratio to bare | ready | request → launch | imports done "
        "| weights resolved | engine built | engine ready | ready → first token |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, row in summary.items():

        def cell(k: str, row: dict[str, float] = row) -> str:
            if k not in row:
                return "-"
            return f"{row[k]:.3f}" if abs(row[k]) < 0.1 else f"{row[k]:.2f}"  # a wake's scale

        lines.append(
            f"| {v} | {cell('first_token_s')} | {cell('ratio_to_bare')} | "
            f"{cell('ready_s')} | {cell('launched')} | {cell('imports_done')} | "
            f"{cell('weights_resolved')} | {cell('engine_built')} | "
            f"{cell('engine_ready')} | {cell('ready_to_token_s')} |"
        )
    lines += ["", "Clocks start at:", ""]
    lines += [f"- {v}: {CLOCKS.get(v, 'launch')}" for v in summary]
    lines += [
        "",
        "torpor_* runs start a fresh `torpor up` per repetition, deploy "
        "manifests/examples/tiny-chat.yaml (initial scale 0), check the revision has no replica "
        "and no earlier cold start, and stream one `/v1/completions` through the activator. "
        "torpor_warm waits, before each request, until the pool reports a ready standby (the "
        "steady state the pool keeps) and 2 s more. `request → launch` is the activator and "
        "autoscaler's share (request to the replica's launch); `ready` is when the platform saw "
        "/health 200; `ready → first token` is the rest (readiness reaching the activator, "
        "proxying, the token).",
    ]
    if "torpor_suspended" in summary:
        lines += [
            "",
            "torpor_suspended deploys tiny-chat with `torpor.dev/suspend-after: 3s` instead "
            "(`harness/coldstart/suspended.py`), cold-starts it with one request (warm pool 0), "
            "waits until `torpor status` shows it `suspended` (its replica's process group "
            "SIGSTOPped, withdrawn from the endpoints) and 1 s more, then times one streamed "
            "request: the activator holds it and pokes, the autoscaler sends SIGCONT and sees "
            "/health 200, publishes the replica, the activator releases the request. Its "
            "`ready` is that request's first token (the platform's wake is inside it). What it "
            "costs meanwhile: the replica's memory, none of its CPU "
            "(`tests/e2e/test_suspend.py` checks utime+stime from /proc).",
    ]
    base = summary.get("bare_vllm", {}).get("first_token_s")
    if base:
        lines += ["", "| target | ratio to bare | limit | met |", "|---|---|---|---|"]
        for v, limit, what in TARGETS:
            if v in summary:
                ratio = summary[v]["first_token_s"] / base
                lines.append(
                    f"| {what} | {ratio:.3f} | {limit} | {'yes' if ratio <= limit else 'no'} |"
                )
    path.write_text("\n".join(lines) + "\n")


SEGMENT_LABELS = (
    ("launched", "request → launch (activator, autoscaler)", "#e7969c"),
    ("imports_done", "start + imports", "#9ecae1"),
    ("weights_resolved", "weights", "#fdae6b"),
    ("engine_built", "engine build", "#a1d99b"),
    ("engine_ready", "OpenAI app up", "#fdd0a2"),
    ("replica_ready", "seen ready by the platform", "#c7e9c0"),
    ("first_token_s", "to first token", "#bcbddc"),
)


def write_chart(summary: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.6 * len(names)))
    for i, v in enumerate(names):
        row = summary[v]
        if "engine_ready" not in row:  # bare vLLM reports no phases of its own
            ax.barh(i, row["ready_s"], color="#bdbdbd", label="start to ready (no phases)")
            ax.barh(
                i,
                row["first_token_s"] - row["ready_s"],
                left=row["ready_s"],
                color="#bcbddc",
                label="to first token",
            )
        else:
            left = 0.0
            for key, label, color in SEGMENT_LABELS:
                if key not in row:
                    continue
                width = max(row[key] - left, 0.0)
                ax.barh(i, width, left=left, color=color, label=label)
                left = max(left, row[key])
        ax.text(
            row["first_token_s"] + 0.2, i, f"{row['first_token_s']:.1f} s", va="center", fontsize=8
        )
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the variant's clock start (spawn, assignment or request)")
    ax.set_xlim(0, max(r["first_token_s"] for r in summary.values()) * 1.12)
    handles, texts = ax.get_legend_handles_labels()
    unique = dict(zip(texts, handles, strict=True))
    order = [label for _, label, _ in SEGMENT_LABELS] + ["start to ready (no phases)"]
    keys = sorted(unique, key=lambda t: order.index(t) if t in order else len(order))
    ax.legend(
        [unique[k] for k in keys], keys, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7
    )
    ax.set_title("Cold start to first token (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_results(
    results: list[RunResult],
    out: Path,
    machine: str,
    runs: int,
    name: str = "coldstart",
    title: str = "tiny model",
) -> None:
    summary = summarize(results)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": machine,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "runs": str(runs),
    }
    (out / f"{name}.json").write_text(
        json.dumps(
            {"meta": meta, "summary": summary, "runs": [asdict(r) for r in results]}, indent=1
        )
    )
    write_markdown(summary, out / f"{name}.md", meta, title)
    write_chart(summary, out / f"{name}.png")
    print((out / f"{name}.md").read_text())
