"""What the local actuator reports of a dead replica for ``torpor status``: the meaningful line
of its log (the exception), not a traceback frame, vLLM's prefixes or what a dying process prints
after it (issue 21, item 6)."""

from __future__ import annotations

import pytest

from embedded.local_actuator import error_line, exit_reason

P = "(Worker pid=4522) ERROR 12-07 21:05:23 [multiproc_executor.py:1063] "
E = "(EngineCore pid=4514) ERROR 12-07 21:05:23 [core.py:1512] "
M = "(MainProcess pid=4359) ERROR 12-07 21:05:23 [async_llm.py:906] "
# vLLM 0.32 (CPU), whose worker died at its first forward (a token past the model's vocabulary),
# abridged: the worker's exception, the engine core's wrapper of it, the API server's
# EngineDeadError, then shutdown noise.
ENGINE_DIED = f"""\
{P}WorkerProc hit an exception.
{P}Traceback (most recent call last):
{P}  File "/x/vllm/v1/executor/multiproc_executor.py", line 1055, in _execute_worker_rpc
{P}    return torch.embedding(weight, input, padding_idx, scale_grad_by_freq, sparse)
{P}           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
{P}IndexError: index out of range in self
{E}  File "/x/vllm/v1/executor/multiproc_executor.py", line 444, in get_response
{E}    raise RuntimeError(
{E}RuntimeError: Worker failed with error 'index out of range in self', please check the \
stack trace above for the root cause
{M}AsyncLLM output_handler failed.
{M}Traceback (most recent call last):
{M}    raise self._format_exception(outputs) from None
{M}vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace \
(above) for the root cause.
(EngineCore pid=4514) INFO 12-07 21:05:23 [multiproc_executor.py:479] [shutdown] Executor: wait
INFO:     127.0.0.1:56760 - "POST /v1/completions HTTP/1.1" 500 Internal Server Error
nanobind: leaked 4 instances!
 - leaked instance 0x7feda88b17c8 of type "triton._C.libtriton.ir.attribute"
nanobind: this is likely caused by a reference counting issue in the binding code.
"""


@pytest.mark.parametrize(
    ("log", "line"),
    [
        (ENGINE_DIED, "IndexError: index out of range in self"),
        # Only wrappers that point above: the last of them is all there is.
        (
            f"{M}vllm.v1.engine.exceptions.EngineDeadError: See stack trace (above)\nbye\n",
            "vllm.v1.engine.exceptions.EngineDeadError: See stack trace (above)",
        ),
        # A plain Python traceback.
        (
            'Traceback (most recent call last):\n  File "a.py", line 1\n    f()\n'
            "ValueError: no such model\n",
            "ValueError: no such model",
        ),
        # The runtime's own last word.
        (
            "INFO loading\ntorpor runtime: no model at /models/nope\n",
            "torpor runtime: no model at /models/nope",
        ),
        # No exception: the last ERROR message, not a frame of it.
        (
            f"{E}Worker proc VllmWorker-0 died unexpectedly, shutting down executor.\n"
            f'{E}  File "x.py", line 3\nnanobind: leaked 3 types!\n',
            "Worker proc VllmWorker-0 died unexpectedly, shutting down executor.",
        ),
        (
            "Fatal Python error: Illegal instruction\n\nThread 0x1 (most recent call first):\n",
            "Fatal Python error: Illegal instruction",
        ),
        ("INFO: all is well\n", None),
        ("", None),
    ],
)
def test_the_meaningful_line_of_a_dead_replicas_log(log: str, line: str | None) -> None:
    assert error_line(log) == line


def test_an_exit_by_signal_names_the_signal() -> None:
    assert exit_reason(0) == "exited with code 0"
    assert exit_reason(3) == "exited with code 3"
    assert exit_reason(-4) == "exited with code -4 (SIGILL)"
    assert exit_reason(-9) == "exited with code -9 (SIGKILL)"
    assert exit_reason(-200) == "exited with code -200"
