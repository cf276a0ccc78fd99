"""``torpor deploy -f`` of a multi-document file or a directory: the split, and each document
deployed on its own against a real ``torpor up`` (no replica starts: the services start at zero).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded.bulk import Document, documents, split_documents
from harness.manifests import TINY_CHAT
from harness.platform import Platform

DOC = TINY_CHAT.read_text()


def named(name: str) -> str:
    return DOC.replace("name: tiny-chat\n", f"name: {name}\n").replace(
        "--served-model-name=tiny-chat", f"--served-model-name={name}"
    )


def test_documents_split_at_markers_and_comment_only_pieces_are_dropped() -> None:
    text = b"# header\n---\na: 1\n---  # second\nb: |\n  ---\n  text\n...\n---\n# nothing\n"
    assert split_documents(text) == [b"a: 1\n", b"b: |\n  ---\n  text\n"]
    assert split_documents(b"--- {c: 3}\n") == [b"{c: 3}\n"]
    assert split_documents(b"a: 1\n") == [b"a: 1\n"]


def test_a_directory_is_its_yaml_files_in_order(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text("b: 1\n")
    (tmp_path / "a.yaml").write_text("a: 1\n---\na: 2\n")
    (tmp_path / "notes.txt").write_text("not a manifest")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("c: 1\n")
    assert documents(tmp_path) == [
        Document("a.yaml#1", b"a: 1\n"),
        Document("a.yaml#2", b"a: 2\n"),
        Document("b.yml", b"b: 1\n"),
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        documents(tmp_path / "empty")


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    from runtime.tinymodel import make_tiny_llama

    home = tmp_path / "home"
    make_tiny_llama(home / "models" / "tiny-llama")
    p = Platform.start(home, timeout_s=60, extra=("--warm-pool", "0"))
    try:
        yield p
    finally:
        p.stop()


def test_each_document_is_deployed_on_its_own_and_a_bad_one_changes_nothing(
    platform: Platform, tmp_path: Path
) -> None:
    target = 'autoscaling.knative.dev/target: "4"'
    bad = named("chat-c").replace(target, 'autoscaling.knative.dev/target: "0"')
    manifest = tmp_path / "three.yaml"
    manifest.write_text("\n---\n".join([named("chat-a"), bad, named("chat-b")]))
    result = platform.cli("deploy", "-f", str(manifest), check=False)
    assert result.returncode == 1
    assert "service/default/chat-a created revision chat-a-00001" in result.stdout
    assert "service/default/chat-b created revision chat-b-00001" in result.stdout
    assert "three.yaml#2: " in result.stderr and "autoscaling.knative.dev/target" in result.stderr
    assert "1 of 3 documents refused" in result.stderr
    status = json.loads(platform.cli("status", "--json").stdout)
    assert sorted(r["service"] for r in status["revisions"]) == ["chat-a", "chat-b"]
    # status filters: by service, by namespace, only what is not at rest
    one = json.loads(platform.cli("status", "chat-b", "--json").stdout)
    assert [r["service"] for r in one["revisions"]] == ["chat-b"]
    assert json.loads(platform.cli("status", "-n", "other", "--json").stdout)["revisions"] == []
    assert json.loads(platform.cli("status", "--active", "--json").stdout)["revisions"] == []


def test_a_directory_deploys_every_manifest_in_it(platform: Platform, tmp_path: Path) -> None:
    folder = tmp_path / "services"
    folder.mkdir()
    for name in ("chat-x", "chat-y"):
        (folder / f"{name}.yaml").write_text(named(name))
    result = platform.cli("deploy", "-f", str(folder))
    assert result.stdout.count("created revision") == 2
    status = json.loads(platform.cli("status", "--json").stdout)
    assert sorted(r["service"] for r in status["revisions"]) == ["chat-x", "chat-y"]
