"""The runtime process contract: every message reads back as written; bad input is refused."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from runtime.contract import (
    PHASES,
    ContractError,
    PhaseReport,
    ServeArgs,
    StandbyAssignment,
    StandbyReady,
    StandbyReply,
    find_startup_report,
)

CONTRACT = Path(__file__).resolve().parents[2] / "runtime" / "contract.py"


def test_contract_imports_only_the_standard_library() -> None:
    tree = ast.parse(CONTRACT.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import would reach into the runtime"
            assert node.module is not None
            imported.add(node.module.split(".")[0])
    assert imported  # the walk saw the imports
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, (
        imported - set(sys.stdlib_module_names)
    )


@pytest.mark.parametrize(
    "args",
    [
        ServeArgs(model="/m/tiny"),
        ServeArgs(
            model="file:///models/tiny",
            host="0.0.0.0",
            port=8080,
            served_model_name="tiny",
            replica_id="r-1",
            launched_at=1764500000.123456,
            cache_dir="/var/lib/torpor/cache",
            cache_budget_bytes=10**9,
            use_cache=False,
            fork_engine=False,
            drain_timeout_s=12.5,
            engine_args=("--max-model-len", "512", "--dtype=bfloat16"),
        ),
        ServeArgs(model="m", fork_engine=True, engine_args=("--enforce-eager",)),
    ],
)
def test_serve_args_round_trip(args: ServeArgs) -> None:
    assert ServeArgs.parse(args.encode()) == args


def test_serve_args_parse_the_equals_form_and_keep_vllm_flags_in_order() -> None:
    got = ServeArgs.parse(["--max-num-seqs=4", "--model=/m", "--port=9", "-O", "3"])
    assert (got.model, got.port) == ("/m", 9)
    assert got.engine_args == ("--max-num-seqs=4", "-O", "3")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--port", "1"], "--model"),
        (["--model", "m", "--port", "http"], "--port"),
        (["--model", "m", "--launched-at", "nan"], "--launched-at"),
        (["--model", "m", "--drain-timeout", "soon"], "--drain-timeout"),
    ],
)
def test_serve_args_refuse_bad_input(argv: list[str], match: str) -> None:
    with pytest.raises(ContractError, match=match):
        ServeArgs.parse(argv)


def test_serve_args_take_no_abbreviation() -> None:
    # --mod is vLLM's business (or nobody's), never the runtime's --model.
    with pytest.raises(ContractError, match="--model"):
        ServeArgs.parse(["--mod", "m"])


def test_phase_report_round_trip() -> None:
    plain = PhaseReport("startup", "r-1", 100.0, False, (("process_started", 0.5),))
    knative = PhaseReport(
        "first_token",
        "tiny-chat-00001-deployment-abc",
        100.25,
        True,
        tuple((p, float(i)) for i, p in enumerate(PHASES)),
        service="tiny-chat",
        configuration="tiny-chat",
        revision="tiny-chat-00001",
    )
    for report in (plain, knative):
        line = report.encode()
        assert "\n" not in line
        assert PhaseReport.parse(line) == report
    assert "revision" not in plain.encode()  # identity fields only when there is one


def test_phase_report_carries_the_engine_path_and_reads_lines_without_it() -> None:
    report = PhaseReport("startup", "r-1", 100.0, False, (("engine_ready", 4.0),),
                         engine="cpu attention=vec (torch reports no AMX tiles)")
    assert PhaseReport.parse(report.encode()) == report
    old = '{"event": "startup", "replica_id": "r", "launched_at": 1, "warm": false, "phases": {}}'
    assert PhaseReport.parse(old).engine is None
    assert "engine" not in PhaseReport("startup", "r", 1.0, False, ()).encode()
    with pytest.raises(ContractError, match="engine"):
        PhaseReport.parse(old[:-1] + ', "engine": 3}')


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[1]",
        '{"event": "hello", "replica_id": "r", "launched_at": 1, "warm": false, "phases": {}}',
        '{"event": "startup", "replica_id": 3, "launched_at": 1, "warm": false, "phases": {}}',
        '{"event": "startup", "replica_id": "r", "launched_at": true, "warm": false, "phases": {}}',
        '{"event": "startup", "replica_id": "r", "launched_at": 1, "warm": 1, "phases": {}}',
        '{"event": "startup", "replica_id": "r", "launched_at": 1, "warm": false, "phases": []}',
        '{"event": "startup", "replica_id": "r", "launched_at": 1, "warm": false,'
        ' "phases": {"a": "1"}}',
        '{"event": "startup", "replica_id": "r", "launched_at": 1, "warm": false, "phases": {},'
        ' "revision": 5}',
    ],
)
def test_phase_report_refuses_bad_lines(line: str) -> None:
    with pytest.raises(ContractError):
        PhaseReport.parse(line)


def test_find_startup_report_takes_the_last_good_startup_line() -> None:
    first = PhaseReport("startup", "r-1", 1.0, False, (("engine_ready", 4.0),))
    last = PhaseReport("startup", "r-2", 2.0, True, (("engine_ready", 1.0),))
    token = PhaseReport("first_token", "r-2", 2.0, True, (("first_token_served", 3.0),))
    log = "\n".join(
        ["INFO x", first.encode(), last.encode(), token.encode(), '{"event": "startup", broken'],
    )
    assert find_startup_report(log) == last
    assert find_startup_report("INFO nothing yet\n") is None


def test_standby_messages_round_trip() -> None:
    for assignment in (
        StandbyAssignment(("--model", "m", "--port", "9"), {"X": "1"}),
        StandbyAssignment(()),
    ):
        raw = assignment.encode()
        assert raw.endswith(b"\n") and raw.count(b"\n") == 1
        assert StandbyAssignment.parse(raw) == assignment
    for reply in (StandbyReply(True, pid=42), StandbyReply(False, error="bad arguments")):
        assert StandbyReply.parse(reply.encode()) == reply
    ready = StandbyReady(pid=7, seconds=6.25)
    assert StandbyReady.parse(ready.encode()) == ready


def test_standby_messages_refuse_bad_input() -> None:
    with pytest.raises(ContractError, match="argv"):
        StandbyAssignment.parse(b'{"argv": "--model m"}')
    with pytest.raises(ContractError, match="env"):
        StandbyAssignment.parse(b'{"argv": [], "env": ["A"]}')
    with pytest.raises(ContractError, match="JSON"):
        StandbyAssignment.parse(b"\xff")
    with pytest.raises(ContractError, match="pid"):
        StandbyReply.parse(b'{"accepted": true}')
    with pytest.raises(ContractError, match="accepted"):
        StandbyReply.parse(b'{"pid": 3}')
    with pytest.raises(ContractError, match="standby_ready"):
        StandbyReady.parse('{"event": "standby_ready", "pid": "7", "seconds": 1}')
