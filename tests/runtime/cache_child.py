"""Run one `WeightCache.ensure` in a child process, with a copy seam chosen by `mode`.

    python -m tests.runtime.cache_child ROOT SOURCE MODE LOGFILE
mode "slow": each file copy is logged to LOGFILE and takes a moment (concurrency test);
mode "hang": after the first file, touch LOGFILE and sleep (to be killed halfway).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import BinaryIO

from runtime.cache import WeightCache, copy_and_hash


def main() -> None:
    root, source, mode, logfile = sys.argv[1:5]
    copied = 0

    def copy(src: BinaryIO, dst: BinaryIO) -> str:
        nonlocal copied
        if mode == "hang" and copied == 1:
            Path(logfile).touch()
            time.sleep(600)
        if mode == "slow":
            with open(logfile, "a") as f:
                f.write("copy\n")
            time.sleep(0.2)
        copied += 1
        return copy_and_hash(src, dst)

    print(WeightCache(Path(root), copy_file=copy).ensure(source), flush=True)


if __name__ == "__main__":
    main()
