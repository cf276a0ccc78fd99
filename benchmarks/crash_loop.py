"""A crash-looping revision on the real embedded platform: how often it is relaunched, and what
its callers get, over a fixed window — this tree against a baseline revision, in one run.

The model is the tiny Llama with a vocabulary smaller than its tokenizer's (``tiny-oov``): vLLM
starts it and answers ``/health``, then its worker dies at the first forward (an IndexError in the
embedding), the same shape as the SIGILL on AMX machines (issue 21): a replica that is ready, then
dies at its first request. A client sends a completion; on any answer it sends the next one a
second later, until the window ends. Launches are counted from the replica log files the local
actuator writes, one per launch.

Both trees are git revisions (``--rev``, default HEAD, and a baseline, default the last one
before crash-loop handling landed), each checked out in a temporary ``git worktree`` and measured
with this script, the same model and the same window: the worktree's packages come first on
``PYTHONPATH``, so ``torpor up`` and its replicas run that revision's code.

    .venv/bin/python benchmarks/crash_loop.py [--window 120] [--rev HEAD] [--baseline-rev 297fb6c]

Writes benchmarks/results/crash_loop.json and .md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# The last commit before crash-loop handling (issue 21): a crash after ready was relaunched at once.
DEFAULT_BASELINE = "297fb6c"


def measure(model: Path, window_s: float) -> dict[str, Any]:
    """One window against ``torpor up`` of whatever tree is first on ``sys.path``."""
    import httpx

    from harness.manifests import renamed_tiny_chat
    from harness.platform import Platform

    tmp = Path(tempfile.mkdtemp(prefix="torpor-crashloop-"))
    home = tmp / "home"
    shutil.copytree(model.parent, home / "models")
    manifest = renamed_tiny_chat(tmp, "crashy", model=model.name)
    platform = Platform.start(home, timeout_s=90)
    logs = home / "logs" / "default" / "crashy-00001"
    codes: collections.Counter[str] = collections.Counter()
    answers: list[dict[str, Any]] = []
    status = ""
    try:
        platform.cli("deploy", "-f", str(manifest))
        start = time.monotonic()
        with httpx.Client(base_url=platform.url) as client:
            while time.monotonic() - start < window_s:
                sent = time.monotonic()
                try:
                    r = client.post(
                        "/default/crashy/v1/completions",
                        json={"model": "crashy", "prompt": "Hello", "max_tokens": 4},
                        timeout=max(1.0, window_s - (sent - start)),
                    )
                    code = "ok" if r.status_code == 200 else r.json()["error"]["code"]
                    label = f"{r.status_code} {code}"
                except httpx.TimeoutException:
                    label = "still waiting when the window ended"
                codes[label] += 1
                answers.append({"sent_s": round(sent - start, 1),
                                "took_s": round(time.monotonic() - sent, 2), "answer": label})
                time.sleep(1.0)
        window = time.monotonic() - start
        launches = len(list(logs.glob("*.log")))
        status = platform.cli("status", "crashy").stdout
    finally:
        platform.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"window_s": round(window, 1), "launches": launches, "answers": dict(codes),
            "first_answers": answers[:5], "status_at_end": status}


def run_tree(tree: Path, model: Path, window_s: float) -> dict[str, Any]:
    """This script's ``measure`` with ``tree``'s packages first on the path, in a child."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = (f"import json, sys; sys.path.insert(0, {str(tree)!r}); "
            f"sys.path.insert(1, {str(REPO / 'benchmarks')!r}); import crash_loop; "
            f"print(json.dumps(crash_loop.measure(__import__('pathlib').Path({str(model)!r}), "
            f"{window_s})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True,
                         capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window", type=float, default=120.0, help="seconds of requests per tree")
    p.add_argument("--rev", default="HEAD", help="the revision measured")
    p.add_argument("--baseline-rev", default=DEFAULT_BASELINE)
    p.add_argument("--out", type=Path, default=RESULTS)
    ns = p.parse_args()

    from runtime.tinymodel import make_tiny_llama

    work = Path(tempfile.mkdtemp(prefix="torpor-crashloop-bench-"))
    model = make_tiny_llama(work / "models" / "crash-llama", size="tiny-oov")
    trees = {}
    for name, rev in (("baseline", ns.baseline_rev), ("measured", ns.rev)):
        short = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True,
                               capture_output=True, text=True).stdout.strip()
        subprocess.run(["git", "worktree", "add", "--detach", str(work / name), short],
                       cwd=REPO, check=True, capture_output=True)
        trees[name] = (short, work / name)
    try:
        base_rev, base_tree = trees["baseline"]
        rev, tree = trees["measured"]
        results = {
            "machine": f"{os.cpu_count()} cores, {sys.platform}",
            "model": "tiny-oov: tiny Llama whose worker dies at the first forward (IndexError)",
            "runs": [
                {"tree": f"baseline {base_rev} (no crash-loop handling)",
                 **run_tree(base_tree, model, ns.window)},
                {"tree": f"{rev} (crash-loop back-off)", **run_tree(tree, model, ns.window)},
            ],
        }
    finally:
        for _, path in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO,
                           check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "crash_loop.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# A crash-looping revision: relaunches and answers over a window",
        "",
        f"`benchmarks/crash_loop.py --window {ns.window:.0f}` on {results['machine']}; "
        f"{results['model']}. One client: a completion, the next one a second after each answer.",
        "",
        "| code | window | launches | answers |",
        "|---|---|---|---|",
    ]
    for run in results["runs"]:
        answers = ", ".join(f"{n} x {label}" for label, n in run["answers"].items())
        lines.append(f"| {run['tree']} | {run['window_s']:.0f} s | {run['launches']} | {answers} |")
    for run in results["runs"]:
        lines += ["", f"## {run['tree']}", "", "First answers (sent at, took, answer):", ""]
        lines += [f"- {a['sent_s']} s, {a['took_s']} s: {a['answer']}"
                  for a in run["first_answers"]]
        lines += ["", "`torpor status crashy` at the end:", "", "```text",
                  run["status_at_end"].rstrip(), "```"]
    (ns.out / "crash_loop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
