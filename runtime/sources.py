"""Where models come from: the pluggable source kinds the weight cache copies from.

A source kind is a factory from a URI to a `Source`. Only local directories (`/path` or
`file:///path`) exist today; an object store would be another factory in the mapping handed to
`WeightCache`, nothing else changes.

Before the cache copies a source it checks that it is a model (`check_model`): a manifest's
`--model=/etc` or `--model=/` must not be copied into the cache, nor fill its disk. A model is a
`config.json` (Hugging Face's layout; or Mistral's `params.json`, which vLLM also reads) at the
top and at least one weights file, every file a regular file, at most `MAX_MODEL_FILES` of them
and at most the size limit in all. Listing a local directory stops at `MAX_MODEL_FILES`, so even
`/` is refused after a bounded walk.
"""

from __future__ import annotations

import hashlib
import os
import stat
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


class NotAModel(SourceError):
    """The source does not look like a model directory (no config, no weights, odd files)."""


class ModelTooLarge(SourceError):
    """The source is larger than the platform's limit on one model."""

    def __init__(self, uri: str, size: int, limit: int) -> None:
        super().__init__(
            f"model source {uri} holds {size} bytes, more than the limit of {limit} bytes "
            "(TORPOR_MAX_MODEL_BYTES, or the cache budget)"
        )
        self.size = size
        self.limit = limit


CONFIG_FILES = ("config.json", "params.json")
# Weight formats vLLM loads: safetensors, PyTorch pickles, GGUF.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# A 405B checkpoint is 191 safetensors shards; the largest model directories hold hundreds.
MAX_MODEL_FILES = 10_000


def check_model(uri: str, files: list[SourceFile], max_bytes: int) -> None:
    """Refuse, with a typed error, a source that is not a model or is larger than ``max_bytes``."""
    top = {f.path for f in files if "/" not in f.path}
    if not top.intersection(CONFIG_FILES):
        raise NotAModel(
            f"model source {uri} is not a model directory: no {' or '.join(CONFIG_FILES)} at its "
            "top level"
        )
    if not any(f.path.endswith(WEIGHT_SUFFIXES) for f in files):
        raise NotAModel(
            f"model source {uri} is not a model directory: no weights files "
            f"({', '.join('*' + s for s in WEIGHT_SUFFIXES)})"
        )
    size = sum(f.size for f in files)
    if size > max_bytes:
        raise ModelTooLarge(uri, size, max_bytes)


ADAPTER_CONFIG = "adapter_config.json"


def check_adapter(uri: str, files: list[SourceFile], max_bytes: int) -> None:
    """As ``check_model``, for a LoRA adapter: PEFT's ``adapter_config.json`` and weights."""
    top = {f.path for f in files if "/" not in f.path}
    if ADAPTER_CONFIG not in top:
        raise NotAModel(f"adapter source {uri} is not a PEFT adapter: no {ADAPTER_CONFIG}")
    if not any(f.path.endswith(WEIGHT_SUFFIXES) for f in files):
        raise NotAModel(f"adapter source {uri} is not a PEFT adapter: no weights files")
    size = sum(f.size for f in files)
    if size > max_bytes:
        raise ModelTooLarge(uri, size, max_bytes)


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
                relative = full.relative_to(self.root).as_posix()
                try:
                    st = full.stat()  # a symlink (a Hugging Face snapshot's) counts as its file
                except OSError as e:
                    raise NotAModel(f"model source {self.root}: cannot read {relative}: "
                                    f"{e.strerror}") from None
                if not stat.S_ISREG(st.st_mode):
                    # A FIFO or a device would block the copy or never end.
                    raise NotAModel(f"model source {self.root}: {relative} is not a regular file")
                out.append(SourceFile(relative, st.st_size))
                if len(out) > MAX_MODEL_FILES:
                    raise NotAModel(f"model source {self.root} holds more than {MAX_MODEL_FILES} "
                                    "files; it is not a model directory")
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
