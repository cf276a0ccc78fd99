"""`python -m runtime {serve,standby,cache,make-tiny}`.

Kept import-light: `serve` pays for vLLM's imports only after its own arguments parse, and the
`cache` and `make-tiny` commands never import vLLM at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _cache_main(argv: list[str]) -> int:
    from runtime.args import cache_dir_from
    from runtime.cache import WeightCache, prefetch

    p = argparse.ArgumentParser(prog="python -m runtime cache")
    p.add_argument("action", choices=["ensure", "warm", "list"])
    p.add_argument("source", nargs="?")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--budget-bytes", type=int, default=None)
    p.add_argument("--verify", action="store_true", help="full sha256 check of the entry")
    ns = p.parse_args(argv)
    cache = WeightCache(ns.cache_dir or cache_dir_from(os.environ), ns.budget_bytes)
    if ns.action == "list":
        for e in cache.entries():
            print(json.dumps({"digest": e.digest, "bytes": e.size, "last_used": e.last_used}))
        return 0
    if not ns.source:
        p.error("SOURCE is required")
    path = cache.ensure(ns.source, full_verify=ns.verify)
    out: dict[str, object] = {"source": ns.source, "path": str(path)}
    if ns.action == "warm":
        out["prefetched_bytes"] = prefetch(path)
    print(json.dumps(out))
    return 0


def _make_tiny_main(argv: list[str]) -> int:
    from runtime.tinymodel import SHAPES, make_tiny_llama

    p = argparse.ArgumentParser(prog="python -m runtime make-tiny")
    p.add_argument("out", type=Path)
    p.add_argument("--size", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(argv)
    print(make_tiny_llama(ns.out, seed=ns.seed, size=ns.size))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m runtime {serve,standby,cache,make-tiny} ...", file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        from runtime.launch import serve_main

        return serve_main(rest)
    if cmd == "standby":
        from runtime.standby import standby_main

        return standby_main(rest)
    if cmd == "cache":
        return _cache_main(rest)
    if cmd == "make-tiny":
        return _make_tiny_main(rest)
    print(f"unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
