"""What ``torpor deploy -f`` deploys: a file, a multi-document YAML file, or a directory of them.

Each YAML document is one Service and one deploy call, so a deploy is atomic per document, as
``kubectl apply -f`` is per object: a bad document is refused with its own error, naming where it
came from, and changes nothing, while the others go on. A directory means its ``*.yaml`` and
``*.yml`` files, sorted by name, not its subdirectories (``kubectl apply -f DIR`` without ``-R``).

Documents are split at YAML's document markers: a line that starts with ``---`` or ``...`` followed
by nothing or whitespace. YAML forbids such a line inside any document's content (block scalars
included), so this split is the parser's own; each piece is then parsed by the control plane with
every limit of ``torpor.manifest.yaml_load``. Pieces holding only comments and blank lines are not
documents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_MARKER = re.compile(rb"^(---|\.\.\.)(?:[ \t].*)?$")
_BLANK_OR_COMMENT = re.compile(rb"^[ \t]*(#.*)?$")
MAX_FILES = 10_000


@dataclass(frozen=True, slots=True)
class Document:
    source: str  # file name, with "#N" for the Nth document of a file that holds several
    data: bytes


def split_documents(data: bytes) -> list[bytes]:
    """The YAML documents of ``data``, each with its own lines (markers dropped)."""
    pieces: list[list[bytes]] = [[]]
    for line in data.splitlines(keepends=True):
        match = _MARKER.match(line.rstrip(b"\r\n"))
        if match is None:
            pieces[-1].append(line)
            continue
        if match.group(1) == b"---":
            rest = line.rstrip(b"\r\n")[3:].strip()
            # `--- {inline: document}` starts its document on the marker's line; `--- # note` not.
            pieces.append([rest + b"\n"] if rest and not rest.startswith(b"#") else [])
        else:
            pieces.append([])
    out = [b"".join(p) for p in pieces]
    return [d for d in out if any(not _BLANK_OR_COMMENT.match(x) for x in d.splitlines())]


def documents(path: Path, data: bytes | None = None) -> list[Document]:
    """The documents to deploy from ``path`` (``data``: its bytes, already read, e.g. stdin).

    Raises ``OSError`` for a path that cannot be read and ``ValueError`` for a directory with no
    manifest in it.
    """
    if data is not None:
        return _of(path.name, data)
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
        )[: MAX_FILES + 1]
        if not files:
            raise ValueError(f"{path} holds no *.yaml or *.yml file")
        if len(files) > MAX_FILES:
            raise ValueError(f"{path} holds more than {MAX_FILES} manifest files")
        return [d for f in files for d in _of(f.name, f.read_bytes())]
    return _of(path.name, path.read_bytes())


def _of(name: str, data: bytes) -> list[Document]:
    pieces = split_documents(data)
    if len(pieces) <= 1:
        # One document (or none: the control plane says what is wrong with it), sent as written.
        return [Document(name, data)]
    return [Document(f"{name}#{i}", piece) for i, piece in enumerate(pieces, start=1)]
