"""A standby without vLLM: the real socket protocol (runtime.contract), then it just waits.

    python -m tests.embedded.fake_standby --socket PATH
After its assignment it writes {"argv": [...], "x": $X} to its (new) stdout and sleeps until
signalled.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from runtime.contract import StandbyReply
from runtime.standby import listen, wait_for_assignment


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--socket", type=Path, required=True)
    ns = p.parse_args()
    got = wait_for_assignment(listen(ns.socket), ns.socket)
    if got is None:
        return 0
    conn, a = got
    if a.fds:
        os.dup2(a.fds[0], 1)
        os.dup2(a.fds[1], 2)
    os.environ.update(a.env)
    conn.sendall(StandbyReply(accepted=True, pid=os.getpid()).encode())
    conn.close()
    print(json.dumps({"argv": list(a.argv), "x": os.environ.get("X")}), flush=True)
    signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
