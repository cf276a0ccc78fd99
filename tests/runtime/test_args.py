from pathlib import Path

import pytest

from runtime.args import DEFAULT_DRAIN_TIMEOUT_S, parse_launch_args, runtime_env, vllm_argv
from runtime.contract import ContractError


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
    with pytest.raises(ContractError, match="--model"):
        parse_launch_args(["--port", "1"], {})


# -- Knative's container contract ----------------------------------------------------------------


def test_without_port_it_listens_on_loopback_8000() -> None:
    cfg = parse_launch_args(["--model", "m"], {})
    assert (cfg.host, cfg.port) == ("127.0.0.1", 8000)


def test_knative_port_means_every_interface_on_that_port() -> None:
    cfg = parse_launch_args(["--model", "m"], {"PORT": "8080"})
    assert (cfg.host, cfg.port) == ("0.0.0.0", 8080)


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        (["--port", "9000"], ("0.0.0.0", 9000)),
        (["--host", "127.0.0.1"], ("127.0.0.1", 8080)),
        (["--host", "::", "--port", "9"], ("::", 9)),
    ],
)
def test_explicit_flags_win_over_port(flags: list[str], want: tuple[str, int]) -> None:
    cfg = parse_launch_args(["--model", "m", *flags], {"PORT": "8080"})
    assert (cfg.host, cfg.port) == want


@pytest.mark.parametrize("bad", ["http", "0", "70000", "-1"])
def test_a_bad_port_variable_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ContractError, match=r"\$PORT"):
        parse_launch_args(["--model", "m"], {"PORT": bad})


def test_cache_dir_from_torpor_cache_dir_then_home() -> None:
    env = {"TORPOR_HOME": "/home/t", "TORPOR_CACHE_DIR": "/var/lib/torpor/cache"}
    assert parse_launch_args(["--model", "m"], env).cache_dir == Path("/var/lib/torpor/cache")
    assert parse_launch_args(["--model", "m", "--cache-dir", "/c"], env).cache_dir == Path("/c")
    assert parse_launch_args(["--model", "m"], {"TORPOR_HOME": "/h"}).cache_dir == Path("/h/cache")


def test_knative_identity_names_the_replica_and_labels_it() -> None:
    env = {
        "K_SERVICE": "tiny-chat",
        "K_CONFIGURATION": "tiny-chat",
        "K_REVISION": "tiny-chat-00001",
        "HOSTNAME": "tiny-chat-00001-deployment-5d8f7-x2x9q",
    }
    cfg = parse_launch_args(["--model", "m"], env)
    assert cfg.replica_id == "tiny-chat-00001-deployment-5d8f7-x2x9q"
    assert cfg.identity.labels() == {
        "service": "tiny-chat",
        "configuration": "tiny-chat",
        "revision": "tiny-chat-00001",
    }
    no_hostname = parse_launch_args(["--model", "m"], {"K_REVISION": "rev-1"})
    assert no_hostname.replica_id.startswith("rev-1-pid-")
    assert parse_launch_args(["--model", "m", "--replica-id", "r"], env).replica_id == "r"


def test_off_knative_hostname_is_not_a_replica_id() -> None:
    cfg = parse_launch_args(["--model", "m"], {"HOSTNAME": "laptop"})
    assert cfg.replica_id.startswith("pid-")
    assert cfg.identity.labels() == {}


def test_drain_timeout_from_flag_env_or_default() -> None:
    assert parse_launch_args(["--model", "m"], {}).drain_timeout_s == DEFAULT_DRAIN_TIMEOUT_S
    env = {"TORPOR_DRAIN_TIMEOUT_S": "40"}
    assert parse_launch_args(["--model", "m"], env).drain_timeout_s == 40.0
    assert parse_launch_args(["--model", "m", "--drain-timeout", "5"], env).drain_timeout_s == 5.0
    with pytest.raises(ContractError, match="TORPOR_DRAIN_TIMEOUT_S"):
        parse_launch_args(["--model", "m"], {"TORPOR_DRAIN_TIMEOUT_S": "-1"})
    with pytest.raises(ContractError, match="drain-timeout"):
        parse_launch_args(["--model", "m", "--drain-timeout", "-1"], {})


def test_vllm_drains_on_sigterm_unless_told_otherwise() -> None:
    cfg = parse_launch_args(["--model", "m", "--drain-timeout", "7.5"], {})
    assert "--shutdown-timeout=8" in vllm_argv(cfg, Path("/x"), cpu=False)  # whole seconds, up
    given = parse_launch_args(["--model", "m", "--shutdown-timeout", "0"], {})
    argv = vllm_argv(given, Path("/x"), cpu=False)
    assert [a for a in argv if a.startswith("--shutdown-timeout")] == ["--shutdown-timeout"]


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


def test_the_runtimes_flags_come_after_the_engines() -> None:
    """argparse lets the last occurrence win: an engine argument cannot replace them."""
    cfg = parse_launch_args(["--model", "m", "--port", "9", "--ho=0.0.0.0", "--dtype=half"], {})
    argv = vllm_argv(cfg, Path("/x"), cpu=False)
    assert argv[:2] == ["--ho=0.0.0.0", "--dtype=half"]
    assert argv.index("--host") > 1 and argv[argv.index("--port") + 1] == "9"
