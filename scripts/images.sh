#!/usr/bin/env bash
# Builds torpor's container images with podman, layer-cached, tagged as the manifests name them:
#
#   scripts/images.sh                      # all four: runtime-cpu activator autoscaler runtime-gpu
#   scripts/images.sh runtime-cpu activator
#
# Each Dockerfile's build context is the repository root (.dockerignore keeps it to the sources).
# `--isolation chroot` because that is what builds in unprivileged sandboxes (and here, where
# podman's OCI runtime cannot run a container); it makes no difference to the image.
#
# Base images: the Dockerfiles default to public ones (python:3.11-slim; nvidia/cuda for the GPU
# runtime). When the public base cannot be pulled (no registry reachable), a local Debian bookworm
# base with python3 (3.11, as python:3.11-slim) is made once with debootstrap from the Debian
# mirror apt already uses, and imported as localhost/torpor-base:bookworm-py3. The GPU image then
# cannot have its CUDA base: it is built on the local base without vLLM (TORPOR_EXTRAS empty) and
# tagged *-novllm, said so below, so that the rest of it is still checked.
#
# Packages: pip inside the build resolves as pip on this machine does. The build machine's pip
# configuration (`pip config list`: index, extra indexes, find-links, constraints, CA bundle) is
# replayed into a pip.conf mounted only during the build (PIP_CONFIG_FILE build argument), with each
# local directory or file it names mounted read-only beside it; nothing of it lands in an image.
#
# Environment: TORPOR_IMAGE_REPO (default ghcr.io/torpor-dev), TORPOR_IMAGE_VERSION (0.1.0),
# TORPOR_IMAGE_REV (build a git revision, e.g. HEAD, instead of the working tree),
# TORPOR_IMAGE_BASE (force one base for the Python images), TORPOR_IMAGE_TIMES (append
# "name tag seconds bytes" lines to this file), TORPOR_IMAGE_NO_HOST_PIP=1 (no pip replay).
set -euo pipefail
cd "$(dirname "$0")/.."

repo="${TORPOR_IMAGE_REPO:-ghcr.io/torpor-dev}"
version="${TORPOR_IMAGE_VERSION:-0.1.0}"
local_base="localhost/torpor-base:bookworm-py3"
public_base="docker.io/library/python:3.11-slim"
public_gpu_base="docker.io/nvidia/cuda:12.8.1-runtime-ubuntu24.04"
all=(runtime-cpu activator autoscaler runtime-gpu)
images=("$@")
[ ${#images[@]} -gt 0 ] || images=("${all[@]}")
for name in "${images[@]}"; do
  [ -f "images/$name/Dockerfile" ] || { echo "images.sh: no images/$name/Dockerfile" >&2; exit 2; }
done
command -v podman >/dev/null || {
  echo "images.sh: podman is needed (Debian: apt-get install -y podman buildah debootstrap)" >&2
  exit 2
}

say() { printf '==> %s\n' "$*" >&2; }

# True when the image is local or could be pulled now (a short timeout: no registry, no wait).
have_or_pull() {
  podman image exists "$1" && return 0
  timeout 60 podman pull -q "$1" >/dev/null 2>&1
}

debian_mirror() {
  # The first Debian archive apt is configured with (deb822 or one-line format).
  local uri
  uri="$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
    /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security | head -1 \
    | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
    | awk '{print $1}')"
  echo "${uri:-http://deb.debian.org/debian}"
}

make_local_base() {
  if podman image exists "$local_base"; then
    say "local base $local_base exists (cached)"
    return
  fi
  command -v debootstrap >/dev/null || { echo "images.sh: debootstrap is needed" >&2; exit 2; }
  local mirror rootfs t0
  mirror="$(debian_mirror)"
  rootfs="$(mktemp -d)"
  t0=$(date +%s)
  say "making $local_base: debootstrap bookworm from $mirror (python3, python3-venv)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >/dev/null
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import -q - "$local_base" >/dev/null
  rm -rf "$rootfs"
  say "local base made in $(( $(date +%s) - t0 )) s"
}

# Writes the replayed pip.conf into $1 and prints the podman -v options (one per line).
host_pip_mounts() {
  local dir="$1" pip
  if [ -x .venv/bin/pip ]; then pip=.venv/bin/pip; else pip="python3 -m pip"; fi
  $pip config list 2>/dev/null | python3 -c '
import os, shlex, sys
from urllib.parse import urlparse

out_dir = sys.argv[1]
values = {}
for line in sys.stdin:
    key, _, raw = line.strip().partition("=")
    scope, _, name = key.rpartition(".")
    if not raw or scope not in ("global", ":env:", "install"):
        continue
    value = raw.strip("\x27\"")
    if scope == ":env:" or name not in values:  # the environment wins, as in pip
        values[name] = value
mounts, conf, n = [], [], 0

def local(path):
    global n
    inside = f"/run/torpor-build/m{n}"
    n += 1
    mounts.append(f"{path}:{inside}:ro")
    return inside

for name in ("index-url", "extra-index-url", "find-links", "constraint", "cert",
             "default-timeout"):
    if name not in values:
        continue
    items = []
    for item in values[name].split():
        url = urlparse(item)
        if url.scheme == "file" and os.path.isdir(url.path) and name.endswith("index-url"):
            # A local "simple" index links its files relatively (../../files/x.whl): mount the
            # directory above it.
            root = os.path.normpath(url.path)
            items.append("file://" + local(os.path.dirname(root)) + "/" + os.path.basename(root))
        elif url.scheme == "file" and os.path.exists(url.path):
            items.append("file://" + local(url.path))
        elif item.startswith("/") and os.path.exists(item):
            items.append(local(item))
        else:
            items.append(item)
    joined = " ".join(items)
    conf.append(f"{name} = {joined}")
with open(os.path.join(out_dir, "pip.conf"), "w") as f:
    f.write("[global]\n" + "\n".join(conf) + "\n")
for m in mounts:
    print(m)
' "$dir"
}

build_args=(--isolation chroot --network host --layers)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [ "${TORPOR_IMAGE_NO_HOST_PIP:-0}" != 1 ]; then
  mapfile -t mounts < <(host_pip_mounts "$tmp")
  for m in "${mounts[@]}"; do build_args+=(-v "$m"); done
  build_args+=(-v "$tmp/pip.conf:/run/torpor-build/pip.conf:ro"
    --build-arg PIP_CONFIG_FILE=/run/torpor-build/pip.conf)
  say "pip inside the build resolves as here: ${#mounts[@]} local paths mounted read-only"
fi

context=.
if [ -n "${TORPOR_IMAGE_REV:-}" ]; then
  context="$tmp/context"
  mkdir "$context"
  git archive "$TORPOR_IMAGE_REV" | tar -x -C "$context"
  say "building from git revision $(git rev-parse --short "$TORPOR_IMAGE_REV"), not the working tree"
fi

# The source revision as the OCI label; "-dirty": the working tree had uncommitted changes.
revision="$(git rev-parse "${TORPOR_IMAGE_REV:-HEAD}" 2>/dev/null || echo unknown)"
if [ -z "${TORPOR_IMAGE_REV:-}" ] && ! git diff --quiet HEAD 2>/dev/null; then
  revision+="-dirty"
fi
build_args+=(--label "org.opencontainers.image.revision=$revision")

py_base="${TORPOR_IMAGE_BASE:-}"
if [ -z "$py_base" ]; then
  if have_or_pull "$public_base"; then
    py_base="$public_base"
  else
    say "cannot pull $public_base (no registry reachable?): using a local Debian base"
    make_local_base
    py_base="$local_base"
  fi
fi

gpu_note=""
for name in "${images[@]}"; do
  args=("${build_args[@]}")
  case "$name" in
    runtime-cpu) tag="$repo/runtime:$version-cpu" ;;
    runtime-gpu)
      tag="$repo/runtime:$version-gpu"
      if ! have_or_pull "$public_gpu_base"; then
        # No CUDA base: everything but vLLM, on the local Python base, under a name that says so.
        gpu_note="runtime-gpu: no CUDA base image ($public_gpu_base cannot be pulled): built on "
        gpu_note+="$py_base WITHOUT vLLM (TORPOR_EXTRAS=''), tagged $tag-novllm; not deployable"
        say "$gpu_note"
        tag="$tag-novllm"
        args+=(--build-arg "BASE=$py_base" --build-arg "TORPOR_EXTRAS=")
      else
        args+=(--build-arg "BASE=$public_gpu_base")
      fi
      ;;
    *) tag="$repo/$name:$version" ;;
  esac
  [ "$name" = runtime-gpu ] || args+=(--build-arg "BASE=$py_base")
  say "building $tag from images/$name/Dockerfile"
  t0=$(date +%s.%N)
  podman build "${args[@]}" -f "$context/images/$name/Dockerfile" -t "$tag" "$context" >"$tmp/build.log" 2>&1 || {
    tail -40 "$tmp/build.log" >&2
    echo "images.sh: building $name failed" >&2
    exit 1
  }
  secs=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" \
    "$t0" "$(date +%s.%N)")
  size=$(podman image inspect --format '{{.Size}}' "$tag")
  say "built $tag in $secs s ($(( size / 1000000 )) MB)"
  [ -z "${TORPOR_IMAGE_TIMES:-}" ] || echo "$name $tag $secs $size" >>"$TORPOR_IMAGE_TIMES"
done
[ -z "$gpu_note" ] || say "NOTE $gpu_note"
