"""vLLM's own parser reads what the runtime hands it: the runtime's flags win over any spelling.

vLLM's FlexibleArgumentParser is an argparse parser that takes unique prefixes and turns `_` into
`-`; the manifest refuses such spellings of platform flags (torpor/manifest/container.py), and
the runtime puts its own flags last so that even one that got through cannot replace them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from runtime.args import parse_launch_args, vllm_argv
from torpor.manifest.container import OWNED_FLAGS, PLATFORM_FLAGS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def parser() -> Any:
    with warnings.catch_warnings():
        # torch's import-time deprecation notices are not this test's business.
        warnings.simplefilter("ignore", DeprecationWarning)
        pytest.importorskip("vllm")
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        return make_arg_parser(FlexibleArgumentParser(prog="vllm (test)"))


def test_runtime_flags_win_over_abbreviated_and_underscored_spellings(parser: Any) -> None:
    # (--mod would be refused by vLLM itself: ambiguous with --model-impl and others.)
    sneaky = ["--ho=0.0.0.0", "--por", "1", "--served_model_name=other", "--served-model=x"]
    cfg = parse_launch_args(
        ["--model", "/m", "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", "9",
         *sneaky],
        {},
    )  # fmt: skip
    args = parser.parse_args(vllm_argv(cfg, Path("/cache/m"), cpu=True))
    assert (args.host, args.port) == ("127.0.0.1", 9)
    assert (args.model, args.served_model_name) == ("/cache/m", ["tiny"])


def test_no_vllm_flag_is_a_prefix_of_a_platform_flag(parser: Any) -> None:
    """So refusing every prefix of a platform flag in a manifest never refuses a real flag."""
    options = {o for action in parser._actions for o in action.option_strings}
    for flag in (*PLATFORM_FLAGS, *OWNED_FLAGS):
        assert not [o for o in options if o != flag and flag.startswith(o) and len(o) > 2], flag
    assert {"--host", "--port", "--uds"} <= options  # the flags the platform keeps are vLLM's
