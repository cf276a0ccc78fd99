"""The CPU engine path is probed once per machine and kept: keyed, written whole, re-probed when
unreadable; the runtime puts it in the environment of every vLLM process, or fails at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import cpu_engine_cache
from runtime.args import LaunchConfig, parse_launch_args
from runtime.contract import ENV_CPU_ATTN_ISA, ENV_CPU_ENGINE_LINE, ENV_ENGINE_CACHE, ENV_HOME
from runtime.cpu_engine import Candidate, EngineUnavailable, ProbeFacts
from runtime.cpu_engine_cache import (
    EngineCache,
    ProbeFailed,
    cache_dir,
    cpu_identity,
    machine_engine,
    machine_facts,
    machine_key,
    run_probe,
)
from runtime.engine import is_cpu_build

REPO = Path(__file__).resolve().parents[2]
MACHINE = {"cpu": "model name: X\nflags: avx512f", "kernel": "6.1", "torch": "2.13.0+cpu",
           "vllm": "0.32.0", "python": "CPython 3.11.7 x86_64", "format": "1"}


def facts(*outcomes: tuple[str, str], amx: bool = False) -> ProbeFacts:
    return ProbeFacts(
        machine="x86_64", cpu_model="X", torch_version="2.13.0+cpu", vllm_version="0.32.0",
        kernels="_C.abi3.so", amx_tile=amx, avx512=True, avx512_bf16=True, avx2=True,
        capability="AVX512",
        candidates=tuple(Candidate(n, n.split("-")[0], "float32" if n.endswith("float32")
                                   else "bfloat16", False, o, 0 if o == "ok" else -4)
                         for n, o in outcomes),
    )


VEC_OK = facts(("vec", "ok"), ("vec-float32", "ok"))
NOTHING = facts(("vec", "sigill"), ("vec-float32", "ok"))


class Probe:
    def __init__(self, answer: ProbeFacts = VEC_OK) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self) -> ProbeFacts:
        self.calls += 1
        return self.answer


def test_the_key_changes_with_each_thing_the_answer_depends_on() -> None:
    key = machine_key(MACHINE)
    assert key == machine_key(dict(reversed(list(MACHINE.items()))))
    for field in MACHINE:
        assert machine_key({**MACHINE, field: MACHINE[field] + "x"}) != key, field


def test_cpu_identity_is_the_first_cpus_model_and_flags() -> None:
    cpuinfo = ("processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu  amx_tile\n\n"
               "processor\t: 1\nmodel name\t: Intel Xeon\nflags\t\t: fpu amx_tile\ncpu MHz: 2\n")
    assert cpu_identity(cpuinfo) == "flags: fpu amx_tile\nmodel name: Intel Xeon"
    real = machine_facts()
    assert real["cpu"] and real["torch"] != "absent" and real["format"] == "1"


def test_probed_once_then_read_from_the_cache(tmp_path: Path) -> None:
    env = {ENV_ENGINE_CACHE: str(tmp_path / "engine")}
    probe = Probe()
    first = machine_engine(env, probe=probe, machine=MACHINE)
    again = machine_engine(env, probe=probe, machine=MACHINE)
    assert probe.calls == 1 and not first.cached and again.cached
    assert again.facts == VEC_OK and again.path.attention == "vec"
    assert first.file == tmp_path / "engine" / f"cpu-engine-{machine_key(MACHINE)}.json"
    assert os.listdir(tmp_path / "engine") == [first.file.name]  # nothing left beside it
    kept = json.loads(first.file.read_text())
    assert kept["machine"] == MACHINE and kept["probe"]["candidates"][0]["name"] == "vec"
    # Another machine (here: another torch) has its own file.
    other = machine_engine(env, probe=probe, machine={**MACHINE, "torch": "2.14"})
    assert probe.calls == 2 and other.file != first.file
    machine_engine(env, probe=probe, machine=MACHINE, reprobe=True)
    assert probe.calls == 3


@pytest.mark.parametrize("text", ["", "{", '{"probe": {"format": 1}}', "[]", '{"probe": 3}'])
def test_a_corrupt_cache_file_is_probed_again_and_replaced(tmp_path: Path, text: str) -> None:
    env = {ENV_ENGINE_CACHE: str(tmp_path)}
    EngineCache(tmp_path).path(machine_key(MACHINE)).write_text(text)
    probe = Probe()
    found = machine_engine(env, probe=probe, machine=MACHINE)
    assert probe.calls == 1 and not found.cached
    assert machine_engine(env, probe=probe, machine=MACHINE).cached


def test_a_failed_write_leaves_the_old_file_whole(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = EngineCache(tmp_path)
    cache.store("k", VEC_OK, MACHINE)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cpu_engine_cache.os, "replace", broken_replace)
    with pytest.raises(OSError):
        cache.store("k", NOTHING, MACHINE)
    assert cache.load("k") == VEC_OK
    assert os.listdir(tmp_path) == [cache.path("k").name]


def test_cache_dir_for_pods_and_for_the_embedded_platform(tmp_path: Path) -> None:
    assert cache_dir({ENV_ENGINE_CACHE: str(tmp_path / "node")}) == tmp_path / "node"
    assert cache_dir({ENV_HOME: str(tmp_path / "home")}) == tmp_path / "home" / "engine"


def fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_run_probe_reads_the_childs_last_line_and_reports_its_failures(tmp_path: Path) -> None:
    line = json.dumps(VEC_OK.to_json())
    assert run_probe(fake_python(tmp_path, f"echo noise\necho '{line}'\n")) == VEC_OK
    with pytest.raises(ProbeFailed, match="exited 2: no torch"):
        run_probe(fake_python(tmp_path, "echo no torch >&2\nexit 2\n"))
    with pytest.raises(ProbeFailed, match="exited -4"):
        run_probe(fake_python(tmp_path, "kill -ILL $$\n"))
    with pytest.raises(ProbeFailed, match="nothing readable"):
        run_probe(fake_python(tmp_path, "echo '{}'\n"))
    with pytest.raises(ProbeFailed, match="did not finish"):
        run_probe(fake_python(tmp_path, "sleep 5\n"), timeout_s=0.2)


# ---- the runtime: the path in the environment before vLLM starts, or a failure at start ----

needs_cpu_build = pytest.mark.skipif(not is_cpu_build(), reason="the CPU build of vLLM")


def cached(tmp_path: Path, answer: ProbeFacts) -> dict[str, str]:
    env = {ENV_ENGINE_CACHE: str(tmp_path)}
    EngineCache(tmp_path).store(machine_key(machine_facts()), answer, machine_facts())
    return env


def launch_config(*engine_args: str) -> LaunchConfig:
    return parse_launch_args(["--model", "/m", *engine_args], {})


@needs_cpu_build
def test_the_runtime_puts_the_path_in_the_environment(tmp_path: Path) -> None:
    from runtime.launch import choose_engine_path

    env = cached(tmp_path, VEC_OK)
    line = choose_engine_path(env, launch_config())
    assert line == "cpu attention=vec (torch reports no AMX tiles)"
    assert env[ENV_CPU_ATTN_ISA] == "vec" and env[ENV_CPU_ENGINE_LINE] == line
    # Asked again in the same process (a standby, once assigned): the same answer.
    assert choose_engine_path(env, launch_config()) == line


@needs_cpu_build
def test_set_by_hand_the_path_replaces_the_probe(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.launch import choose_engine_path

    def no_probe() -> ProbeFacts:
        raise AssertionError("probed")

    monkeypatch.setattr(cpu_engine_cache, "run_probe", no_probe)
    env = {ENV_ENGINE_CACHE: str(tmp_path), ENV_CPU_ATTN_ISA: "AMX"}
    line = choose_engine_path(env, launch_config())
    assert line == f"cpu attention=amx (set by ${ENV_CPU_ATTN_ISA})"


@needs_cpu_build
def test_no_path_fails_the_replica_at_start_but_not_a_standby(tmp_path: Path) -> None:
    from runtime.launch import choose_engine_path

    env = cached(tmp_path, NOTHING)
    assert choose_engine_path(env, None) is None and ENV_CPU_ATTN_ISA not in env
    with pytest.raises(EngineUnavailable, match="--dtype float32"):
        choose_engine_path(env, launch_config())
    line = choose_engine_path(env, launch_config("--dtype", "float32"))
    assert line is not None and line.startswith("cpu attention=vec float32 only")
    assert env[ENV_CPU_ATTN_ISA] == "vec"


@needs_cpu_build
def test_a_failed_probe_fails_the_replica_with_the_way_round_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.launch import choose_engine_path

    def failing() -> ProbeFacts:
        raise ProbeFailed("the CPU engine probe exited 2: no torch")

    monkeypatch.setattr(cpu_engine_cache, "run_probe", failing)
    env = {ENV_ENGINE_CACHE: str(tmp_path)}
    assert choose_engine_path(env, None) is None  # a standby leaves it to its assignment
    with pytest.raises(EngineUnavailable, match=f"no torch. Way out: set \\${ENV_CPU_ATTN_ISA}"):
        choose_engine_path(env, launch_config())


@needs_cpu_build
def test_serve_exits_at_start_with_the_message_when_no_path_works(tmp_path: Path) -> None:
    from runtime.tinymodel import make_tiny_llama

    model = make_tiny_llama(tmp_path / "tiny")
    env = dict(os.environ, **cached(tmp_path / "engine", NOTHING), TORPOR_HOME=str(tmp_path),
               PYTHONPATH=str(REPO))
    env.pop(ENV_CPU_ATTN_ISA, None)
    done = subprocess.run([sys.executable, "-m", "runtime", "serve", "--model", str(model)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("torpor runtime: no CPU attention kernel of vLLM"), last
    assert "Way out: serve it with --dtype float32" in last
    assert "vllm.entrypoints" not in done.stderr  # before vLLM was imported
