"""One log format for every torpor program."""

from __future__ import annotations

import logging


def configure_logging(*, verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Every scrape and probe is an HTTP request; the client's own line per request is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
