"""``torpor status`` of a revision in a crash loop (issue 21): the state, the back-off, the next
try's time and the replica's last error line, in the table and in ``--json``."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from embedded.report import render_table, status_document
from tests.embedded.test_report import SERVICE
from torpor.status import CrashLoopStatus, RevisionStatus


def test_a_crash_loop_shows_its_back_off_next_try_and_last_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        line = "IndexError: index out of range in self"
        crash = CrashLoopStatus(3, line, next_try_at=76445.0, backoff_s=20.0, backing_off=True)
        st = RevisionStatus(
            "default/chat-00001",
            "default",
            "chat",
            "chat-00001",
            1,
            0,
            state="crash-loop",
            reason=line,
            crash_loop=crash,
        )
        doc = status_document([SERVICE], [st], activator_url="http://x")
        row = doc["revisions"][0]
        assert row["state"] == "crash-loop"
        assert row["crash_loop"] == {
            "restarts": 3,
            "last_error": line,
            "next_try_at": 76445.0,
            "backoff_seconds": 20.0,
            "backing_off": True,
        }
        table = render_table(doc)
        assert f"chat-00001: crash-loop: back-off 20s (restart 3 at 21:14:05): {line}" in table
        over = replace(crash, backing_off=False)
        doc = status_document([SERVICE], [replace(st, crash_loop=over)], activator_url="http://x")
        assert "back-off over since 21:14:05 (the next request starts restart 3)" in render_table(
            doc
        )
        starting = replace(st, crash_loop=over, starting_replicas=1)
        doc = status_document([SERVICE], [starting], activator_url="http://x")
        assert f"crash-loop: restart 3 starting: {line}" in render_table(doc)
    finally:
        monkeypatch.undo()
        time.tzset()
