"""Start vLLM's OpenAI server in this process, with the startup phases observable.

The steps mirror vLLM 0.32's `run_server` / `run_server_worker` / `build_and_serve`
(vllm/entrypoints/launchers/api_server/entry.py) so that we can stamp each phase and wrap the
app; everything else (routes, /health, /metrics, shutdown on SIGTERM) is vLLM's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from runtime.adapter_load import AdapterCacheMiddleware, declared_adapters
from runtime.args import LaunchConfig, runtime_env, vllm_argv
from runtime.cache import WeightCache
from runtime.contract import ENV_CPU_ATTN_ISA, ENV_CPU_ENGINE_LINE, ContractError
from runtime.gate import take_platform_token
from runtime.gate import wrap as gate
from runtime.phases import PhaseRecorder, make_phase_gauge

log = logging.getLogger("torpor.runtime.launch")

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]

_GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses")


class FirstTokenMiddleware:
    """Calls `on_first` once, when the first generation response starts sending its body."""

    def __init__(self, app: ASGIApp, on_first: Callable[[], None]) -> None:
        self.app = app
        self._on_first = on_first
        self._done = False

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if self._done or scope["type"] != "http" or scope.get("path") not in _GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif (message["type"] == "http.response.body" and message.get("body")
                  and status == 200 and not self._done):
                self._done = True
                self._on_first()
            await send(message)

        await self.app(scope, receive, watch)


def resolve_model(cfg: LaunchConfig) -> Path:
    if not cfg.use_cache:
        from runtime.sources import open_source

        src = open_source(cfg.source)
        return Path(getattr(src, "root", cfg.source))
    return WeightCache(cfg.cache_dir, cfg.cache_budget_bytes).ensure(cfg.source)


def resolve_adapter(cfg: LaunchConfig, source: str) -> Path:
    """A LoRA adapter's directory through the weight cache (or as is, with ``--no-cache``)."""
    if not cfg.use_cache:
        from runtime.sources import LocalDirSource

        return LocalDirSource.from_uri(source).root
    return WeightCache(cfg.cache_dir, cfg.cache_budget_bytes).ensure(source, adapter=True)


async def _wait_healthy(host: str, port: int, stop: asyncio.Event) -> bool:
    import httpx

    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
    url = f"http://{target}:{port}/health"
    async with httpx.AsyncClient(timeout=2.0) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return True
            await asyncio.sleep(0.05)
    return False


async def serve(cfg: LaunchConfig, recorder: PhaseRecorder) -> None:
    """Resolve the model, build the engine, serve until SIGTERM/SIGINT."""
    import vllm.envs as envs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server
    from vllm.entrypoints.launchers.utils.server_utils import get_uvicorn_log_config
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from runtime.engine import enable_fork_engine, is_cpu_build

    cpu = is_cpu_build()
    if cfg.fork_engine:
        # CPU: patched in after vLLM's platform forces spawn. GPU: vLLM's library default is
        # already fork while CUDA is untouched here, which this process never does.
        if enable_fork_engine():
            log.info("engine core will be forked from this process (imports inherited)")
    else:
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # as vLLM's own CLI

    # SIGTERM during init: vLLM does the same so a stop request never waits for a slow load.
    def _interrupt_init(*_: object) -> None:
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGTERM, _interrupt_init)

    from runtime.vllm_plugin import register as apply_cpu_engine_path

    apply_cpu_engine_path()  # here too: vLLM's entry point may be off ($VLLM_PLUGINS)

    modules_before = set(sys.modules)
    model_path = await asyncio.to_thread(resolve_model, cfg)
    recorder.mark("weights_resolved")

    parser = make_arg_parser(
        FlexibleArgumentParser(prog="vllm (via torpor runtime)")  # type: ignore[no-untyped-call]
    )
    args = parser.parse_args(vllm_argv(cfg, model_path, cpu=cpu))
    validate_parsed_serve_args(args)

    _listen_address, sock = setup_server(args, reuse_port=False)
    stop = asyncio.Event()

    async def report_ready() -> None:
        if await _wait_healthy(cfg.host, cfg.port, stop):
            recorder.mark("engine_ready")
            recorder.emit("startup")
            trace = os.environ.get("TORPOR_IMPORT_TRACE")
            if trace:  # which modules a start still imports: what a standby could preload
                _write_lines(Path(trace), sorted(set(sys.modules) - modules_before))

    def first_token() -> None:
        recorder.mark("first_token_served")
        recorder.emit("first_token")

    ready_task: asyncio.Task[None] | None = None
    try:
        async with build_async_engine_client(args) as engine_client:
            recorder.mark("engine_built")
            supported_tasks = await engine_client.get_supported_tasks()
            app = build_app(args, supported_tasks, engine_client.model_config)
            await init_app_state(engine_client, app.state, args, supported_tasks)
            # vLLM has already built the app's middleware stack; wrap the built stack.
            if app.middleware_stack is None:
                app.middleware_stack = app.build_middleware_stack()
            app.middleware_stack = FirstTokenMiddleware(app.middleware_stack, first_token)
            # An adapter's lora_path is copied through the weight cache, as --model is.
            app.middleware_stack = AdapterCacheMiddleware(
                app.middleware_stack, lambda source: resolve_adapter(cfg, source),
                declared_adapters(os.environ),
            )
            # Outermost: clients reach the inference routes only (issue 23).
            app.middleware_stack = gate(app, app.middleware_stack, cfg.platform_token)
            kwargs: dict[str, Any] = {}
            log_config = get_uvicorn_log_config(args)
            if log_config is not None:
                kwargs["log_config"] = log_config
            ready_task = asyncio.create_task(report_ready())
            shutdown_task = await serve_http(
                app,
                sock=sock,
                enable_ssl_refresh=args.enable_ssl_refresh,
                host=args.host,
                port=args.port,
                log_level=args.uvicorn_log_level,
                access_log=not args.disable_uvicorn_access_log,
                timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE,
                ssl_keyfile=args.ssl_keyfile,
                ssl_certfile=args.ssl_certfile,
                ssl_ca_certs=args.ssl_ca_certs,
                ssl_cert_reqs=args.ssl_cert_reqs,
                ssl_ciphers=args.ssl_ciphers,
                h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
                h11_max_header_count=args.h11_max_header_count,
                **kwargs,
            )
        await shutdown_task
    finally:
        stop.set()
        if ready_task is not None:
            ready_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready_task
        sock.close()


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def prepare_environment(
    env: MutableMapping[str, str], cfg: LaunchConfig | None = None
) -> None:
    """Fast-start defaults, set before vLLM reads its environment."""
    from runtime.engine import is_cpu_build

    engine_args = cfg.engine_args if cfg is not None else ()
    env.update(runtime_env(env, cpu=is_cpu_build(), engine_args=engine_args))


def choose_engine_path(env: MutableMapping[str, str], cfg: LaunchConfig | None) -> str | None:
    """Put the CPU engine path (`runtime.cpu_engine`) in `env` before any vLLM process starts.

    Returns the start-up line's engine part; None off the CPU build. Raises `EngineUnavailable`
    when no path works for this replica (its message names the cause and the way out). A standby
    (`cfg` None) does not know its replica's dtype yet: it leaves that verdict, and any probe
    failure, to its assignment. `$TORPOR_CPU_ATTN_ISA` set by hand replaces the probe.
    """
    from runtime.cpu_engine import EngineUnavailable, for_replica
    from runtime.cpu_engine_cache import ProbeFailed, machine_engine
    from runtime.engine import is_cpu_build, vllm_version

    if not is_cpu_build():
        return None
    given = env.get(ENV_CPU_ATTN_ISA, "").strip().lower()
    line = env.get(ENV_CPU_ENGINE_LINE, "")
    if given:
        if not line.startswith(f"cpu attention={given} "):  # not this runtime's own choice
            line = f"cpu attention={given} (set by ${ENV_CPU_ATTN_ISA})"
            env[ENV_CPU_ENGINE_LINE] = line
        return line
    try:
        found = machine_engine(env)
    except ProbeFailed as e:
        if cfg is None:
            log.warning("%s; the replica will probe again", e)
            return None
        raise EngineUnavailable(
            f"{e}. Way out: set ${ENV_CPU_ATTN_ISA} to vec (or amx) to choose vLLM's CPU "
            "attention path without the probe"
        ) from None
    if found.path.attention is None and cfg is None:
        return None
    replica = for_replica(found.path, cfg.engine_args if cfg else (), vllm_version())
    env[ENV_CPU_ATTN_ISA] = replica.isa
    env[ENV_CPU_ENGINE_LINE] = replica.line
    log.info("engine: %s [%s %s]", replica.line,
             "cached in" if found.cached else "probed just now, kept in", found.file)
    return replica.line


def run(cfg: LaunchConfig, recorder: PhaseRecorder) -> int:
    """Run the server to completion; the exit code for the process."""
    import uvloop

    try:
        recorder.set_gauge(make_phase_gauge(tuple(recorder.labels)))
        uvloop.run(serve(cfg, recorder))
    except KeyboardInterrupt:
        return 0
    except Exception as e:
        log.exception("runtime failed")
        print(f"torpor runtime: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def serve_main(argv: list[str], *, started: float | None = None) -> int:
    """`python -m runtime serve ...`: a plain (not warm) start."""
    from runtime.args import parse_launch_args
    from runtime.phases import process_start_time

    started = process_start_time() if started is None else started
    try:
        cfg = parse_launch_args(argv, os.environ)
        # Out of the environment before anything (vLLM, its engine, a probe) could inherit it.
        cfg = dataclasses.replace(cfg, platform_token=take_platform_token(os.environ))
    except ContractError as e:
        print(f"torpor runtime: {e}", file=sys.stderr, flush=True)
        return 2
    from runtime.sources import SourceError, open_source

    try:
        open_source(cfg.source)  # a wrong --model fails now, not after 10 s of imports
    except SourceError as e:
        print(f"torpor runtime: {e}", file=sys.stderr, flush=True)
        return 2
    prepare_environment(os.environ, cfg)
    recorder = PhaseRecorder(replica_id=cfg.replica_id,
                             launched_at=cfg.launched_at or started, warm=False,
                             labels=cfg.identity.labels())
    recorder.mark("process_started", at=started)
    _configure_logging()
    from runtime.cpu_engine import EngineUnavailable

    try:
        recorder.engine = choose_engine_path(os.environ, cfg)
    except EngineUnavailable as e:  # now, not at the first request
        print(f"torpor runtime: {e}", file=sys.stderr, flush=True)
        return 1
    from runtime.engine import import_engine

    import_engine()
    recorder.mark("imports_done")
    return run(cfg, recorder)


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
