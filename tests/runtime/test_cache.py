import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from runtime import sources
from runtime.cache import (
    DEFAULT_MAX_MODEL_BYTES,
    EntryInfo,
    WeightCache,
    choose_evictions,
    copy_and_hash,
    max_model_bytes_from,
    prefetch,
)
from runtime.sources import ModelTooLarge, NotAModel, SourceError

REPO = Path(__file__).resolve().parents[2]


def make_model(path: Path, size: int = 1000, seed: int = 0) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(f'{{"seed": {seed}}}')
    (path / "model.safetensors").write_bytes(bytes((i * 7 + seed) % 256 for i in range(size)))
    (path / "sub").mkdir()
    (path / "sub" / "tokenizer.json").write_text("{}")
    return path


class CountingCopy:
    def __init__(self, fail_on: int | None = None) -> None:
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self, src: BinaryIO, dst: BinaryIO) -> str:
        self.calls += 1
        if self.calls == self.fail_on:
            dst.write(src.read(10))
            raise OSError("disk went away")
        return copy_and_hash(src, dst)


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_ensure_copies_once_and_returns_same_bytes(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    copy = CountingCopy()
    cache = WeightCache(tmp_path / "cache", copy_file=copy)
    p1 = cache.ensure(str(src))
    assert tree(p1) == tree(src)
    assert copy.calls == 3
    assert cache.ensure(src.as_uri()) == p1  # the file:// form names the same source
    assert copy.calls == 3


def test_content_addressed_identical_sources_share_an_entry(tmp_path: Path) -> None:
    a = make_model(tmp_path / "a")
    b = make_model(tmp_path / "b")
    cache = WeightCache(tmp_path / "cache")
    assert cache.ensure(str(a)) == cache.ensure(str(b))
    assert len(cache.entries()) == 1


def test_changed_source_is_copied_again(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    cache = WeightCache(tmp_path / "cache")
    p1 = cache.ensure(str(src))
    (src / "config.json").write_text('{"seed": 99}')
    p2 = cache.ensure(str(src))
    assert p2 != p1
    assert (p2 / "config.json").read_text() == '{"seed": 99}'


def test_failed_copy_leaves_no_entry(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    cache = WeightCache(tmp_path / "cache", copy_file=CountingCopy(fail_on=2))
    with pytest.raises(OSError, match="disk went away"):
        cache.ensure(str(src))
    assert cache.entries() == []
    assert list((tmp_path / "cache" / "objects").iterdir()) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    assert tree(WeightCache(tmp_path / "cache").ensure(str(src))) == tree(src)


def test_copy_killed_halfway_leaves_no_usable_entry(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    root = tmp_path / "cache"
    halfway = tmp_path / "halfway"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.runtime.cache_child",
            str(root),
            str(src),
            "hang",
            str(halfway),
        ],
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while not halfway.exists():
            assert child.poll() is None, "child exited before reaching the halfway point"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    cache = WeightCache(root)
    assert cache.entries() == []  # the half copy is not an entry
    assert list((root / "tmp").iterdir())  # ... it is left in tmp/ by the dead process
    copy = CountingCopy()
    path = WeightCache(root, copy_file=copy).ensure(str(src))
    assert tree(path) == tree(src)
    assert copy.calls == 3
    assert list((root / "tmp").iterdir()) == []  # and swept by the next ensure


def test_verification_catches_a_changed_byte(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    copy = CountingCopy()
    cache = WeightCache(tmp_path / "cache", copy_file=copy)
    path = cache.ensure(str(src))
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[500] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size, new mtime: the stat check sends it to sha256
    again = cache.ensure(str(src))
    assert tree(again) == tree(src)
    assert copy.calls == 6  # discarded and copied again


def test_full_verify_catches_a_change_that_kept_size_and_mtime(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    cache = WeightCache(tmp_path / "cache")
    path = cache.ensure(str(src))
    weights = path / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[10] ^= 0x01
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # a silent bit flip
    digest = path.parent.name
    assert cache.verify(digest) is False
    assert cache.entries() == []
    assert tree(cache.ensure(str(src), full_verify=True)) == tree(src)


def test_lru_eviction_under_a_budget(tmp_path: Path) -> None:
    now = [1000.0]
    a = make_model(tmp_path / "a", seed=1)
    b = make_model(tmp_path / "b", seed=2)
    c = make_model(tmp_path / "c", seed=3)
    one = sum(len(v) for v in tree(a).values())
    cache = WeightCache(
        tmp_path / "cache", budget_bytes=2 * one, clock=lambda: now[0], protect_recent_s=5
    )
    pa = cache.ensure(str(a))
    now[0] += 10
    pb = cache.ensure(str(b))
    now[0] += 10
    cache.ensure(str(a))  # a is now more recently used than b
    now[0] += 10
    pc = cache.ensure(str(c))
    assert pa.exists() and pc.exists()
    assert not pb.exists()
    assert len(cache.entries()) == 2


def test_choose_evictions_table() -> None:
    entries = [EntryInfo("old", 40, 1.0), EntryInfo("mid", 40, 2.0), EntryInfo("new", 40, 3.0)]
    assert choose_evictions(entries, budget=120, keep=set()) == []
    assert choose_evictions(entries, budget=80, keep=set()) == ["old"]
    assert choose_evictions(entries, budget=40, keep={"old"}) == ["mid", "new"]
    assert choose_evictions(entries, budget=0, keep={"new"}) == ["old", "mid"]
    # Used within the protection window: left alone even over budget.
    assert choose_evictions(entries, budget=0, keep=set(), now=3.5, protect_recent_s=2.0) == ["old"]


def test_two_processes_ensuring_the_same_model_copy_once(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    root = tmp_path / "cache"
    log = tmp_path / "copies.log"
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.runtime.cache_child",
                str(root),
                str(src),
                "slow",
                str(log),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [ch.communicate(timeout=120)[0].strip() for ch in children]
    assert [ch.returncode for ch in children] == [0, 0]
    assert outs[0] == outs[1]
    assert log.read_text().count("copy") == 3  # one copy of three files, not two


def test_unknown_source_kind_and_missing_dir(tmp_path: Path) -> None:
    cache = WeightCache(tmp_path / "cache")
    with pytest.raises(SourceError, match="unsupported model source kind 's3'"):
        cache.ensure("s3://bucket/model")
    with pytest.raises(SourceError, match="not a directory"):
        cache.ensure(str(tmp_path / "nope"))


def test_prefetch_reads_every_byte(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    path = WeightCache(tmp_path / "cache").ensure(str(src))
    assert prefetch(path) == sum(len(v) for v in tree(src).values())


# --- hostile sources (issue 13 item 8): only a model, within the size limit, is copied ---------


def _nothing_copied(cache_root: Path) -> bool:
    return all(not list((cache_root / sub).iterdir()) for sub in ("objects", "index", "tmp"))


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"passwd": b"root:x:0:0", "hosts": b"127.0.0.1"}, "no config.json or params.json"),
        ({"sub/config.json": b"{}", "model.safetensors": b"w"}, "no config.json"),
        ({"config.json": b"{}", "tokenizer.json": b"{}"}, "no weights files"),
        ({"config.json": b"{}", "weights.safetensors.txt": b"w"}, "no weights files"),
    ],
)
def test_a_directory_that_is_not_a_model_is_refused_before_copying(
    tmp_path: Path, layout: dict[str, bytes], message: str
) -> None:
    src = tmp_path / "src"
    for name, data in layout.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    copy = CountingCopy()
    cache = WeightCache(tmp_path / "cache", copy_file=copy)
    with pytest.raises(NotAModel, match=message):
        cache.ensure(str(src))
    assert copy.calls == 0
    assert _nothing_copied(tmp_path / "cache")


def test_etc_is_not_a_model(tmp_path: Path) -> None:
    copy = CountingCopy()
    with pytest.raises(NotAModel):
        WeightCache(tmp_path / "cache", copy_file=copy).ensure("/etc")
    assert copy.calls == 0


def test_mistral_params_json_and_gguf_weights_are_a_model(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "params.json").write_text("{}")
    (src / "consolidated.gguf").write_bytes(b"w" * 10)
    assert tree(WeightCache(tmp_path / "cache").ensure(str(src))) == tree(src)


def test_a_model_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src", size=1000)
    total = sum(len(v) for v in tree(src).values())
    copy = CountingCopy()
    cache = WeightCache(tmp_path / "cache", copy_file=copy, max_model_bytes=total - 1)
    with pytest.raises(ModelTooLarge) as info:
        cache.ensure(str(src))
    assert (info.value.size, info.value.limit) == (total, total - 1)
    assert copy.calls == 0 and _nothing_copied(tmp_path / "cache")
    assert WeightCache(tmp_path / "cache", max_model_bytes=total).ensure(str(src)).is_dir()


def test_the_cache_budget_also_bounds_one_model(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src", size=1000)
    with pytest.raises(ModelTooLarge):
        WeightCache(tmp_path / "cache", budget_bytes=500, max_model_bytes=10**9).ensure(str(src))


def test_the_size_limit_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert max_model_bytes_from({}) == DEFAULT_MAX_MODEL_BYTES == 1 << 40
    assert max_model_bytes_from({"TORPOR_MAX_MODEL_BYTES": "4096"}) == 4096
    for bad in ("0", "-1", "1e9", "lots"):
        with pytest.raises(SourceError, match="TORPOR_MAX_MODEL_BYTES"):
            max_model_bytes_from({"TORPOR_MAX_MODEL_BYTES": bad})
    monkeypatch.setenv("TORPOR_MAX_MODEL_BYTES", "100")
    with pytest.raises(ModelTooLarge):
        WeightCache(tmp_path / "cache").ensure(str(make_model(tmp_path / "src")))


def test_a_fifo_or_a_dangling_link_is_refused_not_copied(tmp_path: Path) -> None:
    fifo_src = make_model(tmp_path / "fifo")
    os.mkfifo(fifo_src / "extra.bin")  # opening it to copy would block forever
    with pytest.raises(NotAModel, match="not a regular file"):
        WeightCache(tmp_path / "cache").ensure(str(fifo_src))
    dangling = make_model(tmp_path / "dangling")
    (dangling / "gone.safetensors").symlink_to(tmp_path / "missing")
    with pytest.raises(NotAModel, match=r"cannot read gone\.safetensors"):
        WeightCache(tmp_path / "cache").ensure(str(dangling))


def test_a_huge_tree_is_refused_after_a_bounded_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "MAX_MODEL_FILES", 5)
    src = make_model(tmp_path / "src")
    for i in range(10):
        (src / f"f{i}.txt").write_text("x")
    with pytest.raises(NotAModel, match="more than 5 files"):
        WeightCache(tmp_path / "cache").ensure(str(src))
