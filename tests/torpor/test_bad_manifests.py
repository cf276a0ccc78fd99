"""The malformed-manifest corpus (issue 7): every file is refused, naming the right field.

``tests/data/bad_manifests/expected.yaml`` maps each file to the field its ``ManifestError`` must
name. Files are parsed and then applied to an empty service, as ``torpor deploy`` does, so errors
only ``apply_manifest`` can find (a traffic entry naming a missing revision) count too. Fuzz tests
check that no input, however broken, raises anything but ``ManifestError``.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torpor.manifest import MAX_MANIFEST_BYTES, ManifestError, apply_manifest, parse_service

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_manifests"
EXPECTED: dict[str, str] = yaml.safe_load((CORPUS / "expected.yaml").read_text())
GOOD = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "tiny-chat.yaml"

# TORPOR_FUZZ_EXAMPLES=20000 for a long hunt; the default keeps CI to seconds.
FUZZ = settings(
    max_examples=int(os.environ.get("TORPOR_FUZZ_EXAMPLES", "300")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def deploy(data: str | bytes, source: str = "<manifest>") -> None:
    apply_manifest(parse_service(data, source=source), None)


def test_corpus_is_complete() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.name != "expected.yaml"}
    assert files == set(EXPECTED), "every corpus file needs an expected field, and vice versa"
    assert len(files) >= 40


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_manifest_is_rejected_naming_the_field(name: str) -> None:
    with pytest.raises(ManifestError) as info:
        deploy((CORPUS / name).read_bytes(), source=name)
    err = info.value
    assert err.field == EXPECTED[name], str(err)
    assert err.reason
    assert str(err).startswith(f"{name}: {err.field}: ")


def test_oversized_file_is_rejected_before_parsing() -> None:
    # A valid manifest followed by a megabyte of comment: refused on size alone.
    data = GOOD.read_bytes() + b"#" + b"x" * MAX_MANIFEST_BYTES
    with pytest.raises(ManifestError) as info:
        deploy(data)
    assert info.value.field == "document"
    assert "larger than" in info.value.reason


def test_huge_flat_document_is_bounded() -> None:
    # Under the byte limit, but two hundred thousand nodes: refused by the node bound.
    data = "labels: [" + "1," * 200_000 + "1]\n"
    with pytest.raises(ManifestError) as info:
        deploy(data)
    assert info.value.field == "document"


def test_the_good_example_passes_the_same_path() -> None:
    deploy(GOOD.read_bytes(), source=GOOD.name)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_manifest_errors(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        deploy(data)


@FUZZ
@given(st.text(max_size=1024))
def test_random_text_raises_only_manifest_errors(text: str) -> None:
    with contextlib.suppress(ManifestError):
        deploy(text)


def _mutated_bytes() -> st.SearchStrategy[bytes]:
    good = GOOD.read_bytes()
    return st.tuples(st.integers(0, len(good)), st.integers(0, 16), st.binary(max_size=16)).map(
        lambda t: good[: t[0]] + t[2] + good[t[0] + t[1] :]
    )


@FUZZ
@given(_mutated_bytes())
def test_corrupted_good_manifest_raises_only_manifest_errors(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        deploy(data)


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["0", "-1", "1.5", "10s", "1m", "NaN", "kpa.autoscaling.knative.dev", "--model"]
    ),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


GOOD_DOC: dict[str, Any] = yaml.safe_load(GOOD.read_text())
GOOD_PATHS = _paths(GOOD_DOC)[1:]


@FUZZ
@given(st.sampled_from(GOOD_PATHS), _VALUES)
def test_any_field_replaced_by_any_value_raises_only_manifest_errors(
    path: tuple[Any, ...], value: Any
) -> None:
    doc = copy.deepcopy(GOOD_DOC)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        text = yaml.safe_dump(doc)
    except yaml.YAMLError:
        return
    with contextlib.suppress(ManifestError):
        deploy(text)
