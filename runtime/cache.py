"""Node-local, content-addressed weight cache.

Layout under `root`:
    objects/<digest>/model/          the files vLLM is pointed at
    objects/<digest>/manifest.json   sizes and sha256 of every file, plus the stat seen at verify
    objects/<digest>/last-use        its mtime is the LRU clock
    index/<sha256(source uri)>.json  source -> digest, with the source's stat signature
    tmp/                             copies in progress (named with the copier's pid)
    locks/                           fcntl lock files

Nothing is copied from a source that does not look like a model or is larger than the limit on
one model (`runtime.sources.check_model`): `max_model_bytes`, by default `$TORPOR_MAX_MODEL_BYTES`
or `DEFAULT_MAX_MODEL_BYTES`, and never more than the cache budget, which a larger model could
only overflow.

`digest` is the sha256 of the canonical manifest, so two sources with the same bytes share one
entry. A copy lands in tmp/ and is renamed into objects/ only when whole, so a crash never leaves
an entry that looks complete. Each `ensure` re-stats the entry; a file whose size or mtime moved
since it was last verified triggers a full sha256 check, and a mismatch discards the entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runtime.sources import (
    DEFAULT_SOURCE_KINDS,
    Source,
    SourceError,
    SourceFactory,
    SourceFile,
    check_adapter,
    check_model,
    open_source,
)

log = logging.getLogger("torpor.runtime.cache")

_CHUNK = 8 * 1024 * 1024

# The copy seam: copy src into dst (an open file), return the sha256 hex of what was copied.
# Tests inject failures here to show that a copy dying halfway leaves no usable entry.
CopyFile = Callable[[BinaryIO, BinaryIO], str]


ENV_MAX_MODEL_BYTES = "TORPOR_MAX_MODEL_BYTES"
DEFAULT_MAX_MODEL_BYTES = 1 << 40
"""1 TiB: above the largest open-weight checkpoints served from one node (Llama 3.1 405B in BF16
is about 812 GB, DeepSeek-V3 in FP8 about 690 GB), far below a disk's worth of `--model=/`."""


class CacheError(RuntimeError):
    pass


def max_model_bytes_from(env: Mapping[str, str]) -> int:
    """``$TORPOR_MAX_MODEL_BYTES`` (a positive whole number of bytes), else the default."""
    text = env.get(ENV_MAX_MODEL_BYTES, "").strip()
    if not text:
        return DEFAULT_MAX_MODEL_BYTES
    if not text.isdigit() or int(text) <= 0:
        raise SourceError(f"${ENV_MAX_MODEL_BYTES} must be a positive number of bytes, "
                          f"got {text!r}")
    return int(text)


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class EntryInfo:
    digest: str
    size: int
    last_used: float


def copy_and_hash(src: BinaryIO, dst: BinaryIO) -> str:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while n := src.readinto(view):  # type: ignore[attr-defined]
        h.update(view[:n])
        dst.write(view[:n])
    return h.hexdigest()


def manifest_digest(files: list[FileEntry]) -> str:
    canon = json.dumps(
        [[f.path, f.size, f.sha256] for f in sorted(files, key=lambda f: f.path)],
        separators=(",", ":"),
    )
    return hashlib.sha256(canon.encode()).hexdigest()


def choose_evictions(entries: list[EntryInfo], budget: int, keep: set[str], *,
                     now: float = 0.0, protect_recent_s: float = 0.0) -> list[str]:
    """Least recently used first, until the total fits the budget.

    Never the kept ones, nor any used in the last `protect_recent_s` seconds: another replica
    may be loading from it right now (the cache may then stay over budget for a while).
    """
    total = sum(e.size for e in entries)
    out: list[str] = []
    for e in sorted(entries, key=lambda e: e.last_used):
        if total <= budget:
            break
        if e.digest in keep or (protect_recent_s > 0 and now - e.last_used < protect_recent_s):
            continue
        out.append(e.digest)
        total -= e.size
    return out


def prefetch(path: Path) -> int:
    """Read every file under path once so the page cache holds it; returns bytes read."""
    total = 0
    buf = bytearray(_CHUNK)
    for p in sorted(Path(path).rglob("*")):
        if not p.is_file():
            continue
        with p.open("rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


class WeightCache:
    def __init__(
        self,
        root: Path,
        budget_bytes: int | None = None,
        *,
        source_kinds: Mapping[str, SourceFactory] = DEFAULT_SOURCE_KINDS,
        copy_file: CopyFile = copy_and_hash,
        clock: Callable[[], float] = time.time,
        protect_recent_s: float = 300.0,
        max_model_bytes: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        limit = max_model_bytes_from(os.environ) if max_model_bytes is None else max_model_bytes
        self.max_model_bytes = limit if budget_bytes is None else min(limit, budget_bytes)
        self._kinds = source_kinds
        self._copy_file = copy_file
        self._clock = clock
        self._protect_recent_s = protect_recent_s
        for sub in ("objects", "index", "tmp", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ---- public API -------------------------------------------------------------------------

    def ensure(self, source: str, *, full_verify: bool = False, adapter: bool = False) -> Path:
        """Return the cached copy of `source`, copying it in first if needed.

        ``adapter``: the source is a LoRA adapter (``runtime.sources.check_adapter``), not a
        model; it is cached, verified and evicted like one."""
        src = open_source(source, self._kinds)
        key = hashlib.sha256(src.uri.encode()).hexdigest()
        # One copier per source across processes; others wait here and then find the entry.
        with self._lock(f"source-{key}"):
            self._clean_stale_tmp()
            signature = src.signature()
            with self._lock("cache"):
                digest = self._lookup(key, signature)
                if digest is not None and self._usable(digest, full_verify=full_verify):
                    self._touch(digest)
                    return self._model_dir(digest)
            tmp, files = self._copy_in(src, self._model_files(src, adapter=adapter))
            digest = manifest_digest(files)
            with self._lock("cache"):
                entry = self.root / "objects" / digest
                if entry.exists() and not self._usable(digest, full_verify=False):
                    shutil.rmtree(entry)
                if entry.exists():
                    shutil.rmtree(tmp)  # same bytes already cached under another source
                else:
                    os.rename(tmp, entry)
                    _fsync_dir(entry.parent)
                self._write_index(key, src.uri, signature, digest)
                self._touch(digest)
                self._evict(keep={digest})
            return self._model_dir(digest)

    def verify(self, digest: str) -> bool:
        """Full sha256 check of one entry against its manifest."""
        with self._lock("cache"):
            return self._usable(digest, full_verify=True)

    def entries(self) -> list[EntryInfo]:
        out: list[EntryInfo] = []
        for entry in (self.root / "objects").iterdir():
            try:
                files = self._read_manifest(entry.name)
                last = (entry / "last-use").stat().st_mtime
            except (OSError, ValueError):
                continue
            out.append(EntryInfo(entry.name, sum(f.size for f in files), last))
        return out

    # ---- internals --------------------------------------------------------------------------

    def _model_dir(self, digest: str) -> Path:
        return self.root / "objects" / digest / "model"

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        with (self.root / "locks" / f"{name}.lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _lookup(self, key: str, signature: str) -> str | None:
        try:
            idx = json.loads((self.root / "index" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        if idx.get("signature") != signature:
            return None  # the source changed since it was cached: copy it again
        digest = idx.get("digest")
        return digest if isinstance(digest, str) else None

    def _write_index(self, key: str, uri: str, signature: str, digest: str) -> None:
        _atomic_write_json(
            self.root / "index" / f"{key}.json",
            {"source": uri, "signature": signature, "digest": digest},
        )

    def _read_manifest(self, digest: str) -> list[FileEntry]:
        data = json.loads((self.root / "objects" / digest / "manifest.json").read_text())
        return [FileEntry(f["path"], int(f["size"]), f["sha256"]) for f in data["files"]]

    def _usable(self, digest: str, *, full_verify: bool) -> bool:
        """Cheap stat check always; full sha256 when asked or when anything moved."""
        entry = self.root / "objects" / digest
        try:
            data = json.loads((entry / "manifest.json").read_text())
            files = [FileEntry(f["path"], int(f["size"]), f["sha256"]) for f in data["files"]]
            seen: dict[str, list[int]] = data.get("verified_stat", {})
            model = entry / "model"
            stats = {f.path: (model / f.path).stat() for f in files}
        except (OSError, ValueError, KeyError):
            log.warning("cache entry %s is unreadable; discarding it", digest)
            shutil.rmtree(entry, ignore_errors=True)
            return False
        if any(stats[f.path].st_size != f.size for f in files):
            log.warning("cache entry %s has a file of the wrong size; discarding it", digest)
            shutil.rmtree(entry, ignore_errors=True)
            return False
        moved = any(
            seen.get(f.path) != [stats[f.path].st_size, stats[f.path].st_mtime_ns] for f in files
        )
        if not (moved or full_verify):
            return True
        for f in files:
            with (model / f.path).open("rb") as fh:
                if _sha256_file(fh) != f.sha256:
                    log.warning("cache entry %s: %s fails its sha256; discarding the entry",
                                digest, f.path)
                    shutil.rmtree(entry, ignore_errors=True)
                    return False
        data["verified_stat"] = {f.path: [stats[f.path].st_size, stats[f.path].st_mtime_ns]
                                 for f in files}
        _atomic_write_json(entry / "manifest.json", data)
        return True

    def _model_files(self, src: Source, *, adapter: bool = False) -> list[SourceFile]:
        """What will be copied, once checked to be a model (or adapter) within the size limit."""
        listed = src.files()
        (check_adapter if adapter else check_model)(src.uri, listed, self.max_model_bytes)
        return listed

    def _copy_in(self, src: Source, listed: list[SourceFile]) -> tuple[Path, list[FileEntry]]:
        tmp = self.root / "tmp" / f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
        model = tmp / "model"
        model.mkdir(parents=True)
        try:
            files: list[FileEntry] = []
            for sf in listed:
                dst = model / sf.path
                dst.parent.mkdir(parents=True, exist_ok=True)
                with src.open(sf.path) as fin, dst.open("wb") as fout:
                    sha = self._copy_file(fin, fout)
                    fout.flush()
                    os.fsync(fout.fileno())
                size = dst.stat().st_size
                if size != sf.size:
                    raise CacheError(f"{src.uri}: {sf.path} changed while it was copied")
                files.append(FileEntry(sf.path, size, sha))
            stats = {f.path: (model / f.path).stat() for f in files}
            _atomic_write_json(tmp / "manifest.json", {
                "source": src.uri,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
                # The bytes were hashed as they were written, so the copy counts as verified.
                "verified_stat": {p: [s.st_size, s.st_mtime_ns] for p, s in stats.items()},
            })
            (tmp / "last-use").touch()
            _fsync_dir(model)
            return tmp, files
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _clean_stale_tmp(self) -> None:
        """Remove copies left behind by processes that died mid-copy."""
        for d in (self.root / "tmp").iterdir():
            pid_text = d.name.split(".", 1)[0]
            if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                shutil.rmtree(d, ignore_errors=True)

    def _touch(self, digest: str) -> None:
        now = self._clock()
        marker = self.root / "objects" / digest / "last-use"
        marker.touch()
        os.utime(marker, (now, now))

    def _evict(self, keep: set[str]) -> None:
        if self.budget_bytes is None:
            return
        for digest in choose_evictions(self.entries(), self.budget_bytes, keep,
                                       now=self._clock(),
                                       protect_recent_s=self._protect_recent_s):
            log.info("evicting cache entry %s (least recently used)", digest)
            shutil.rmtree(self.root / "objects" / digest, ignore_errors=True)
        for idx in (self.root / "index").glob("*.json"):
            try:
                digest = json.loads(idx.read_text()).get("digest", "")
            except (OSError, ValueError):
                continue
            if not (self.root / "objects" / str(digest)).exists():
                idx.unlink(missing_ok=True)


def _sha256_file(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _atomic_write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
