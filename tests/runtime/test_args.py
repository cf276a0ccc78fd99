from pathlib import Path

import pytest

from runtime.args import parse_launch_args, runtime_env, vllm_argv


def test_contract_arguments_and_passthrough() -> None:
    cfg = parse_launch_args(
        [
            "--host",
            "127.0.0.1",
            "--port",
            "18001",
            "--model",
            "file:///m/tiny",
            "--served-model-name",
            "tiny",
            "--replica-id",
            "r-1",
            "--launched-at",
            "12.5",
            "--cache-dir",
            "/c",
            "--max-model-len",
            "512",
            "--max-num-seqs=4",
        ],
        {},
    )
    assert cfg.source == "file:///m/tiny"
    assert (cfg.host, cfg.port, cfg.served_model_name) == ("127.0.0.1", 18001, "tiny")
    assert (cfg.replica_id, cfg.launched_at, cfg.cache_dir) == ("r-1", 12.5, Path("/c"))
    assert cfg.engine_args == ("--max-model-len", "512", "--max-num-seqs=4")


def test_defaults_from_environment() -> None:
    cfg = parse_launch_args(
        ["--model", "/m/tiny"],
        {"TORPOR_HOME": "/home/t", "TORPOR_CACHE_BUDGET_BYTES": "100", "TORPOR_FORK_ENGINE": "0"},
    )
    assert cfg.cache_dir == Path("/home/t/cache")
    assert cfg.cache_budget_bytes == 100
    assert cfg.served_model_name == "/m/tiny"  # the name the manifest used, not the cache path
    assert cfg.fork_engine is False
    assert cfg.launched_at is None
    assert cfg.use_cache is True


def test_model_is_required() -> None:
    with pytest.raises(SystemExit):
        parse_launch_args(["--port", "1"], {})


def test_vllm_argv_adds_eager_on_cpu_only_when_not_given() -> None:
    cfg = parse_launch_args(["--model", "m", "--served-model-name", "tiny"], {})
    argv = vllm_argv(cfg, Path("/cache/x/model"), cpu=True)
    assert argv[argv.index("--model") + 1] == "/cache/x/model"
    assert argv[argv.index("--served-model-name") + 1] == "tiny"
    assert "--enforce-eager" in argv
    assert "--enforce-eager" not in vllm_argv(cfg, Path("/x"), cpu=False)
    for given in (
        ["--no-enforce-eager"],
        ["--enforce-eager"],
        ["-O", "3"],
        ["--compilation-config={}"],
    ):
        cfg2 = parse_launch_args(["--model", "m", *given], {})
        assert vllm_argv(cfg2, Path("/x"), cpu=True).count("--enforce-eager") == given.count(
            "--enforce-eager"
        )


def test_runtime_env_never_overrides_the_caller() -> None:
    assert runtime_env({}, cpu=True) == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert runtime_env({"VLLM_CPU_KVCACHE_SPACE": "0.2"}, cpu=True) == {}
    assert runtime_env({}, cpu=False) == {}
