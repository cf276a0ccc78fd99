"""The locks under requirements/ are what the tests ran, and agree with pyproject.toml.

scripts/setup.sh installs requirements/dev.lock (hash-checked, ``--no-deps``) and the CPU images
install their own locks, resolved under dev.lock's pins (scripts/lock.sh). These checks keep the
three sources from drifting apart: a range in pyproject.toml that a lock no longer satisfies, an
image lock pinning a version the tests never ran, a pin without its hashes, or a virtualenv that
is not the lock (which would mean the suite ran something else than what ships).
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# lock file -> the extras of pyproject.toml it installs
IMAGE_LOCKS = {
    "runtime-cpu.lock": ("cpu",),
    "activator.lock": (),
    "autoscaler.lock": ("kubernetes",),
}
DEV_EXTRAS = ("cpu", "dev", "kubernetes")
# Left out of every lock on purpose (scripts/lock.sh says why).
LEFT_OUT = {"torchvision", "torchaudio", "torchcodec", "pip", "setuptools"}

_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\]+)")


def pins(lock: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (LOCKS / lock).read_text().splitlines():
        m = _PIN.match(line)
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    names = list(PYPROJECT["dependencies"])
    for extra in extras:
        names += PYPROJECT["optional-dependencies"][extra]
    return [Requirement(r) for r in names]


@pytest.mark.parametrize(
    ("lock", "extras"), [("dev.lock", DEV_EXTRAS), *IMAGE_LOCKS.items()]
)
def test_every_direct_dependency_is_pinned_inside_its_range(
    lock: str, extras: tuple[str, ...]
) -> None:
    pinned = pins(lock)
    for req in requirements(extras):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock} does not pin {req.name} (pyproject: {req})"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {req.name}=={pinned[name]}, outside pyproject's {req}"
        )


@pytest.mark.parametrize("lock", sorted(IMAGE_LOCKS))
def test_image_locks_pin_only_what_the_tests_ran(lock: str) -> None:
    dev = pins("dev.lock")
    for name, version in pins(lock).items():
        assert dev.get(name) == version, f"{lock}: {name}=={version}, dev.lock: {dev.get(name)}"


@pytest.mark.parametrize("lock", ["dev.lock", "build.lock", *IMAGE_LOCKS])
def test_every_pin_carries_hashes_and_no_machine_paths(lock: str) -> None:
    text = (LOCKS / lock).read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9._-]+==)", text)
    pinned = [b for b in blocks if _PIN.match(b)]
    assert pinned, f"{lock} pins nothing"
    for block in pinned:
        assert "--hash=sha256:" in block, f"{lock}: no hash for {block.splitlines()[0]}"
    for word in ("/tmp/", "/work/", "/opt/", "/home/", "file://"):
        assert word not in text, f"{lock} names a machine path ({word})"


def test_locks_leave_out_the_cuda_built_torch_companions() -> None:
    for lock in ["dev.lock", *IMAGE_LOCKS]:
        assert not LEFT_OUT & set(pins(lock)), lock


def test_this_virtualenv_is_the_lock() -> None:
    """The suite runs what dev.lock pins: scripts/setup.sh installed it, nothing moved since."""
    wrong = []
    for name, version in pins("dev.lock").items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (lock {version})")
            continue
        if have != version:
            wrong.append(f"{name}: {have} installed, lock {version}")
    assert not wrong, "the virtualenv is not dev.lock (run scripts/setup.sh):\n" + "\n".join(wrong)
