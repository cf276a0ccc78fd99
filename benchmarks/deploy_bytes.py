"""What one deploy costs the bus among N deployed services (issue 22, fix 7: the "before").

Every spec change publishes the whole services list (``torpor.bus.redis``'s ``_PUBLISH_SERVICES``:
a ``SET`` of the list and a ``PUBLISH`` of ``{"t":"services","s":<list>}``), and every subscriber
(two activators and the autoscaler on Kubernetes) receives and decodes all of it. This measures,
for one more service deployed among N, the bytes written to Redis, the bytes Redis sends to the
subscribers, and the CPU time to encode once and decode once per subscriber (the publisher's and
each subscriber's share), in this process, with the repository's own codec. It also reports the
size one service's spec encodes to: what a per-service event would carry. Per-service events are
NOT implemented; that column is the payload such an event would have, not a measurement of one.

    python benchmarks/deploy_bytes.py [--n 100 1000 10000] [--subscribers 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from control_plane_scale import build_services

from torpor import codec
from torpor.bus.redis import _decode_services

RESULTS = Path(__file__).resolve().parent / "results"


def measure(n: int, subscribers: int) -> dict[str, float | int]:
    services = build_services(n + 1)  # N deployed, then one more
    started = time.process_time()
    body = codec.dumps(services)
    encode_s = time.process_time() - started
    message = '{"t":"services","s":' + body + "}"
    started = time.process_time()
    decoded = _decode_services(json.loads(message)["s"])
    decode_s = time.process_time() - started
    assert len(decoded) == n + 1
    one = codec.dumps(services[-1])
    return {
        "n": n,
        "list_bytes": len(body),
        "to_redis_bytes": 2 * len(body),  # the SET's value and the PUBLISH's message
        "to_subscribers_bytes": subscribers * len(message),
        "encode_ms": round(encode_s * 1000, 1),
        "decode_ms_per_subscriber": round(decode_s * 1000, 1),
        "one_service_bytes": len(one),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--subscribers", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(n, args.subscribers) for n in args.n]
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "subscribers": args.subscribers,
    }
    (RESULTS / "deploy_bytes.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "# One deploy among N services: what the bus carries (before per-service events)",
        "",
        f"Machine: {meta['machine']}. `benchmarks/deploy_bytes.py`; {args.subscribers} "
        "subscribers (two activators and the autoscaler). One more service deployed among N: "
        "the whole list is SET and PUBLISHed, and every subscriber receives and decodes it. "
        "CPU is this process's, encoding once and decoding once (per subscriber). The last "
        "column is the size of one service's spec, what a per-service event would carry: "
        "**per-service events are not implemented** (issue 22, fix 7, not done).",
        "",
        "| N | list bytes | bytes to Redis | bytes to subscribers | encode ms | decode ms per "
        "subscriber | one service's spec, bytes |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['list_bytes']:,} | {r['to_redis_bytes']:,} "
            f"| {r['to_subscribers_bytes']:,} | {r['encode_ms']} | {r['decode_ms_per_subscriber']} "
            f"| {r['one_service_bytes']:,} |"
        )
    lines += [
        "",
        "A bulk deploy of N services one by one publishes 1 + 2 + ... + N services' worth: "
        "quadratic. Redis's default `client-output-buffer-limit pubsub` is 32 MB hard / 8 MB "
        "soft for 60 s: a subscriber that falls behind on a few such messages is disconnected.",
    ]
    (RESULTS / "deploy_bytes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
