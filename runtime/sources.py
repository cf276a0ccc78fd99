"""Where models come from: the pluggable source kinds the weight cache copies from.

A source kind is a factory from a URI to a `Source`. Only local directories (`/path` or
`file:///path`) exist today; an object store would be another factory in the mapping handed to
`WeightCache`, nothing else changes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative, with "/" separators
    size: int


class Source(Protocol):
    @property
    def uri(self) -> str: ...

    def files(self) -> list[SourceFile]: ...

    def signature(self) -> str:
        """A cheap fingerprint that changes when the content may have (sizes, mtimes)."""
        ...

    def open(self, path: str) -> BinaryIO: ...


class SourceError(ValueError):
    pass


@dataclass(frozen=True)
class LocalDirSource:
    root: Path

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    @classmethod
    def from_uri(cls, uri: str) -> LocalDirSource:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise SourceError(f"file URI with a remote host is not supported: {uri}")
            path = Path(unquote(parsed.path))
        else:
            path = Path(uri).expanduser()
        path = path.resolve()
        if not path.is_dir():
            raise SourceError(f"model source is not a directory: {path}")
        return cls(path)

    def files(self) -> list[SourceFile]:
        out: list[SourceFile] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue  # markers and editor droppings are not model content
                full = Path(dirpath) / name
                out.append(SourceFile(full.relative_to(self.root).as_posix(), full.stat().st_size))
        if not out:
            raise SourceError(f"model source is empty: {self.root}")
        return out

    def signature(self) -> str:
        h = hashlib.sha256()
        for f in self.files():
            st = (self.root / f.path).stat()
            h.update(f"{f.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def open(self, path: str) -> BinaryIO:
        return (self.root / path).open("rb")


SourceFactory = Callable[[str], Source]

DEFAULT_SOURCE_KINDS: Mapping[str, SourceFactory] = {"file": LocalDirSource.from_uri}


def open_source(uri: str, kinds: Mapping[str, SourceFactory] = DEFAULT_SOURCE_KINDS) -> Source:
    """A bare path is a `file` source; otherwise the URI scheme picks the kind."""
    scheme = urlparse(uri).scheme if "://" in uri else "file"
    factory = kinds.get(scheme)
    if factory is None:
        raise SourceError(f"unsupported model source kind {scheme!r} in {uri!r}; "
                          f"known: {sorted(kinds)}")
    return factory(uri)
