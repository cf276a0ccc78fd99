"""Runs the built images as a Kubernetes/Knative pod would, and records what happened.

For each image (built by ``scripts/images.sh``) this starts the image's own ENTRYPOINT, as its own
USER, in its WORKDIR, with its ENV, on its root filesystem (``podman create`` + ``podman mount``:
the container's writable layer), the manifest's ``args`` after it, and the environment its manifest
and the platform give it (Knative's ``PORT``, ``K_SERVICE``, ``K_CONFIGURATION``, ``K_REVISION``;
kubelet's ``HOSTNAME``; the ``torpor-defaults`` ConfigMap). Nothing of podman runs the process:
``podman run`` cannot start a container in this sandbox (its OCI runtime may not set rlimits), so
the pod is made by hand, as a container runtime does it:

- its own network namespace (``ip netns``) joined to the host by a veth pair, so the pod has its
  own address (10.244.77.2/24; the host side, 10.244.77.1, plays the node and the Services);
- its own PID, mount, UTS and IPC namespaces (``unshare``): the ENTRYPOINT is PID 1, as in a pod;
- /proc, a read-only /sys, a tmpfs /dev with the usual devices and a 64 MiB /dev/shm (the
  container runtimes' default), /etc/hosts and /etc/hostname as kubelet writes them; the volumes
  the manifest mounts are bind mounts of host directories (as a hostPath or PVC would be); a
  read-only root filesystem where the manifest's securityContext asks for one.

Then, as kubelet would, the probes (``httpGet`` from the host to the pod address), an OpenAI
completion from the official ``openai`` client for the runtime, and SIGTERM to PID 1 with the exit
code and the time it took. The activator and the autoscaler get a real ``redis-server`` on the
host as their bus (the ConfigMap's bus host name resolves to the host through /etc/hosts). There is
no Kubernetes API server here: the autoscaler gets kubelet's ``KUBERNETES_SERVICE_*`` variables
and a service account token (in-cluster configuration, as in a pod), first pointing at an address
where nothing listens (this records what it does), then at the controller tests' API server
emulator (harness/kube_emulator.py) served over TLS there, whose Lease shows
which pod leads.

The runtime pod as tiny-chat.yaml has it gets the container runtimes' 64 MiB /dev/shm, where vLLM's
engine cannot start (it asks for 160 MiB); ``--runtime-shm-mb 256`` runs it again with a 256 MiB
/dev/shm, as a Memory emptyDir mounted at /dev/shm would give it.

Run (root; after scripts/images.sh; ~3 min here):
``.venv/bin/python benchmarks/images_check.py --runtime-shm-mb 256 [--build-times LABEL=FILE]...``
(FILE: what ``TORPOR_IMAGE_TIMES`` made scripts/images.sh write); writes
``benchmarks/results/images.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from runtime.tinymodel import make_tiny_llama

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "results"
NETNS = "torpor-imgchk"
HOST_IF = "torpor-imgchk0"
HOST_IP = "10.244.77.1"
POD_IP = "10.244.77.2"
KUBE_PORT = 6443
REPO = os.environ.get("TORPOR_IMAGE_REPO", "ghcr.io/torpor-dev")
VERSION = os.environ.get("TORPOR_IMAGE_VERSION", "0.1.0")


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)}: {done.stderr.strip()}")
    return done.stdout


# ---------------------------------------------------------------------------------------------
# What a pod is made of


@dataclass
class PodSpec:
    name: str  # the pod's name (HOSTNAME, metadata.name)
    image: str
    args: list[str]  # the manifest's args (replace the image's CMD)
    env: dict[str, str]  # the container's env as kubelet/Knative give it (the image's ENV below it)
    port: int
    health_path: str
    volumes: dict[str, Path] = field(default_factory=dict)  # mountPath -> host dir (read-only)
    read_only_root: bool = False
    hosts: dict[str, str] = field(default_factory=dict)  # extra /etc/hosts names -> address
    files: dict[str, str] = field(default_factory=dict)  # extra files in the rootfs (secrets)
    grace_s: float = 30.0  # terminationGracePeriodSeconds
    shm_mb: int = 64  # /dev/shm: the container runtimes' default, or a Memory emptyDir there


def expand_kubelet(text: str, env: Mapping[str, str]) -> str:
    """kubelet's ``$(VAR)`` expansion in args: only the container's own env; unknown names stay."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def container_of(manifest: Path, kind: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all(manifest.read_text()):
        if doc and doc.get("kind") == kind:
            spec = doc["spec"]["template"]["spec"]
            return {"container": spec["containers"][0], "pod": spec, "meta": doc["metadata"],
                    "template_meta": doc["spec"]["template"].get("metadata", {})}
    raise ValueError(f"no {kind} in {manifest}")


def configmap_data() -> dict[str, str]:
    doc = yaml.safe_load((ROOT / "manifests/platform/config.yaml").read_text())
    return {k: str(v) for k, v in doc["data"].items()}


# ---------------------------------------------------------------------------------------------
# Running one


@dataclass
class Image:
    ref: str
    entrypoint: list[str]
    cmd: list[str]
    user: str
    workdir: str
    env: dict[str, str]
    size: int
    revision: str  # org.opencontainers.image.revision (scripts/images.sh sets it)

    @classmethod
    def inspect(cls, ref: str) -> Image:
        info = json.loads(sh("podman", "image", "inspect", ref))[0]
        cfg = info["Config"]
        env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
        revision = (cfg.get("Labels") or {}).get("org.opencontainers.image.revision", "")
        return cls(ref, cfg.get("Entrypoint") or [], cfg.get("Cmd") or [], cfg.get("User") or "0",
                   cfg.get("WorkingDir") or "/", env, int(info["Size"]), revision)


@contextlib.contextmanager
def rootfs(image: str, name: str) -> Iterator[Path]:
    """The container's root filesystem: the image's layers under a writable layer of its own."""
    sh("podman", "rm", "-f", name, check=False)
    sh("podman", "create", "--name", name, image)
    try:
        yield Path(sh("podman", "mount", name).strip())
    finally:
        sh("podman", "umount", name, check=False)
        sh("podman", "rm", "-f", name, check=False)


@contextlib.contextmanager
def pod_network() -> Iterator[None]:
    """A network namespace with a veth pair: the pod at POD_IP, the host at HOST_IP."""
    sh("ip", "netns", "del", NETNS, check=False)
    sh("ip", "link", "del", HOST_IF, check=False)
    sh("ip", "netns", "add", NETNS)
    try:
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", NETNS)
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        sh("ip", "-n", NETNS, "addr", "add", f"{POD_IP}/24", "dev", "eth0")
        sh("ip", "-n", NETNS, "link", "set", "eth0", "up")
        sh("ip", "-n", NETNS, "link", "set", "lo", "up")
        sh("ip", "-n", NETNS, "route", "add", "default", "via", HOST_IP)
        yield
    finally:
        sh("ip", "link", "del", HOST_IF, check=False)
        sh("ip", "netns", "del", NETNS, check=False)


# Runs as root inside the new mount namespace, before the ENTRYPOINT: the mounts a container
# runtime makes, then chroot and the image's user (host python3, so the image needs no shell).
_SETUP = r"""
set -eu
R="$1"; shift
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t tmpfs -o nosuid,mode=755,size=65536k tmpfs "$R/dev"
for d in null zero full random urandom tty; do
  touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir "$R/dev/shm" "$R/dev/pts"
mount -t tmpfs -o "nosuid,nodev,noexec,size=${SHM_MB}m" shm "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"; ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
while [ "$1" != "--" ]; do  # SRC DST ro|rw: volumes and kubelet's files; DST is under $R
  if [ -d "$1" ]; then mkdir -p "$2"
  else mkdir -p "$(dirname "$2")"; [ -e "$2" ] || touch "$2"; fi
  mount --bind "$1" "$2"; [ "$3" = rw ] || mount -o remount,bind,ro "$2"
  shift 3
done
shift
hostname "$POD_NAME"
[ "$READ_ONLY_ROOT" = 0 ] || mount -o remount,bind,ro "$R"
exec /usr/bin/python3 -c '
import json, os, sys
spec = json.loads(sys.argv[1])
os.chroot(spec["root"]); os.chdir(spec["workdir"])
os.setgroups([spec["gid"]]); os.setgid(spec["gid"]); os.setuid(spec["uid"])
os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
' "$1"
"""


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    log: Path
    started: float

    def pid1(self) -> int:
        """The container's PID 1: unshare's one child."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0])

    def errors(self, most: int = 3) -> list[str]:
        """The first distinct ``...Error: ...`` lines: the root cause, not only the last frame."""
        found: list[str] = []
        for line in self.log.read_text(errors="replace").splitlines():
            match = re.search(r"\w+(Error|Exception): .*", line)
            if match and match[0][:300] not in found:
                found.append(match[0][:300])
        return found[:most]

    def log_tail(self, lines: int = 12) -> list[str]:
        text = self.log.read_text(errors="replace").splitlines()
        return [line[:300] for line in text[-lines:]]


def in_root(root: Path, path: str) -> Path:
    """``path`` inside the container's root with symlinks resolved within it, as container
    runtimes do (runc's securejoin): Debian's /var/run -> /run must not lead to the host's /run."""
    parts = [p for p in path.split("/") if p]
    current = root
    for _ in range(255):
        if not parts:
            return current
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = root
            continue
        current = candidate
    raise ValueError(f"too many symlinks resolving {path} in {root}")


def start_pod(spec: PodSpec, image: Image, root: Path, work: Path) -> Running:
    uid, _, gid = image.user.partition(":")
    env = {**image.env, **spec.env}
    argv = [*image.entrypoint, *[expand_kubelet(a, env) for a in (spec.args or image.cmd)]]
    # kubelet's /etc/hosts and /etc/hostname (bind-mounted files in a real pod).
    hosts = work / f"{spec.name}.hosts"
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost", f"{POD_IP}\t{spec.name}"]
    lines += [f"{addr}\t{host}" for host, addr in spec.hosts.items()]
    hosts.write_text("\n".join(lines) + "\n")
    hostname = work / f"{spec.name}.hostname"
    hostname.write_text(spec.name + "\n")
    mounts: list[str] = []
    for dst, src in spec.volumes.items():
        mounts += [str(src), str(in_root(root, dst)), "ro"]
    mounts += [str(hosts), str(in_root(root, "/etc/hosts")), "rw",
               str(hostname), str(in_root(root, "/etc/hostname")), "rw"]
    for dst, content in spec.files.items():
        f = work / f"{spec.name}.{Path(dst).name}"
        f.write_text(content)
        f.chmod(0o644)
        mounts += [str(f), str(in_root(root, dst)), "ro"]
    launch = json.dumps({"root": str(root), "workdir": image.workdir, "uid": int(uid),
                         "gid": int(gid or uid), "argv": argv, "env": env})
    log = work / f"{spec.name}.log"
    out = log.open("wb")
    cmd = ["ip", "netns", "exec", NETNS, "unshare", "--pid", "--fork", "--mount", "--uts", "--ipc",
           "--propagation", "private", "sh", "-c", _SETUP, "setup", str(root), *mounts, "--",
           launch]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "POD_NAME": spec.name, "SHM_MB": str(spec.shm_mb),
                                 "READ_ONLY_ROOT": "1" if spec.read_only_root else "0"})
    return Running(proc, log, started)


def wait_health(run: Running, url: str, timeout_s: float) -> tuple[float | None, int | None]:
    """Polls like a startup probe (every 0.5 s here); seconds from start to the first 200."""
    deadline = time.monotonic() + timeout_s
    last: int | None = None
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline and run.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                last = client.get(url).status_code
                if last == 200:
                    return time.monotonic() - run.started, last
            time.sleep(0.5)
    return None, last


def terminate(run: Running, grace_s: float) -> dict[str, Any]:
    """SIGTERM to PID 1, as kubelet does; SIGKILL after the grace period."""
    if run.proc.poll() is not None:
        return {"exited_before_sigterm": True, "exit_code": run.proc.returncode}
    pid1 = run.pid1()
    t0 = time.monotonic()
    os.kill(pid1, signal.SIGTERM)
    try:
        code = run.proc.wait(timeout=grace_s)
        killed = False
    except subprocess.TimeoutExpired:
        os.kill(pid1, signal.SIGKILL)
        run.proc.wait()
        code, killed = None, True  # unshare's own status says nothing about PID 1 then
    return {"exit_code": code, "seconds_to_exit": round(time.monotonic() - t0, 2),
            "sigkill_after_grace": killed}


# ---------------------------------------------------------------------------------------------
# The three programs


def runtime_pod(model_dir: Path) -> tuple[PodSpec, dict[str, Any]]:
    manifest = ROOT / "manifests/examples/tiny-chat.yaml"
    found = container_of(manifest, "Service")
    c = found["container"]
    service = found["meta"]["name"]
    revision = f"{service}-00001"
    port = int(c["ports"][0]["containerPort"])
    env = {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}
    env.update({
        # Knative's container contract (PORT from containerPort) and kubelet's HOSTNAME.
        "PORT": str(port), "K_SERVICE": service, "K_CONFIGURATION": service,
        "K_REVISION": revision, "HOSTNAME": f"{revision}-deployment-7d9f-x2x4q",
    })
    declared = {v["name"]: v for v in found["pod"].get("volumes", [])}
    volumes: dict[str, Path] = {}
    shm_mb = 64
    for m in c.get("volumeMounts", []):
        empty = declared.get(m["name"], {}).get("emptyDir")
        if m["mountPath"] == "/dev/shm" and empty is not None:
            shm_mb = _mebibytes(empty.get("sizeLimit", "64Mi"))
        elif empty is None:  # the models volume (PVC or hostPath): the tiny model made here
            volumes[m["mountPath"]] = model_dir
    probe = (c.get("startupProbe") or c.get("readinessProbe") or {}).get("httpGet", {})
    spec = PodSpec(name=env["HOSTNAME"], image=c["image"], args=list(c.get("args", [])), env=env,
                   port=port, health_path=probe.get("path", "/health"), volumes=volumes,
                   shm_mb=shm_mb)
    return spec, {"manifest": str(manifest.relative_to(ROOT)), "served_model_name": service}


def _mebibytes(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024, "M": 1, "G": 1000}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * factor)
    return int(quantity) // 2**20


def platform_pod(kind: str, name: str, extra_env: dict[str, str]) -> PodSpec:
    found = container_of(ROOT / f"manifests/platform/{kind}.yaml", "Deployment")
    c, pod = found["container"], found["pod"]
    env = configmap_data()
    env.update({e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e})
    env["HOSTNAME"] = name
    for e in c.get("env", []):  # fieldRefs
        path = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if path == "metadata.name":
            env[e["name"]] = name
        elif path == "metadata.namespace":
            env[e["name"]] = found["meta"]["namespace"]
    env.update(extra_env)
    port = int(c["ports"][0]["containerPort"])
    probe = c.get("readinessProbe", {}).get("httpGet", {})
    bus_host = re.sub(r"^redis://([^:/]+).*", r"\1", env["TORPOR_BUS_URL"])
    ro = bool(c.get("securityContext", {}).get("readOnlyRootFilesystem"))
    spec = PodSpec(name=name, image=c["image"], args=list(c.get("args", [])), env=env, port=port,
                   health_path=probe.get("path", "/healthz"), read_only_root=ro,
                   hosts={bus_host: HOST_IP})
    spec.grace_s = float(pod.get("terminationGracePeriodSeconds", 30))
    return spec


async def openai_calls(base_url: str, model: str) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    t0 = time.monotonic()
    done = await client.completions.create(model=model, prompt="Hello", max_tokens=8)
    completion_s = time.monotonic() - t0
    t0 = time.monotonic()
    first: float | None = None
    chunks = 0
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True)
    async for _ in stream:
        chunks += 1
        if first is None:
            first = time.monotonic() - t0
    await client.close()
    # The runtime's own startup phases, labelled with the Knative identity from K_*.
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(base_url.removesuffix("/v1") + "/metrics")).text
    phases = [line for line in text.splitlines()
              if line.startswith("torpor_runtime_startup_phase_seconds{")]
    return {
        "startup_phases_from_metrics": phases,
        "completion_s": round(completion_s, 3),
        "completion_tokens": done.usage.completion_tokens if done.usage else None,
        "completion_text": done.choices[0].text,
        "chat_stream_first_chunk_s": round(first or 0.0, 3),
        "chat_stream_chunks": chunks,
    }


def run_one(spec: PodSpec, image: Image, work: Path, startup_timeout_s: float,
            exercise: Any = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "image": image.ref, "entrypoint": image.entrypoint, "user": image.user,
        "workdir": image.workdir, "args": spec.args,
        "env": {k: v for k, v in spec.env.items() if not k.startswith("KUBERNETES_")},
        "pod_address": f"{POD_IP}:{spec.port}", "read_only_root": spec.read_only_root,
        "volumes": sorted(spec.volumes),
    }
    with rootfs(image.ref, f"imgchk-{spec.name[:40]}") as root, pod_network():
        run = start_pod(spec, image, root, work)
        url = f"http://{POD_IP}:{spec.port}{spec.health_path}"
        ready_s, last = wait_health(run, url, startup_timeout_s)
        result["probe"] = {"url": url, "ready_after_s": round(ready_s, 2) if ready_s else None,
                           "last_status": last}
        if ready_s is not None and exercise is not None:
            try:
                result["calls"] = exercise()
            except Exception as exc:  # recorded, not raised: the SIGTERM check still runs
                result["calls"] = {"error": f"{type(exc).__name__}: {exc}"}
        result["sigterm"] = terminate(run, spec.grace_s)
        result["errors"] = run.errors()
        result["log_tail"] = run.log_tail()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-times", action="append", default=[],
                   help="TORPOR_IMAGE_TIMES files of scripts/images.sh runs, as LABEL=FILE")
    p.add_argument("--only", choices=["runtime", "activator", "autoscaler"], action="append")
    p.add_argument("--out", type=Path, default=RESULTS / "images.json")
    p.add_argument("--runtime-shm-mb", type=int, action="append", default=[],
                   help="run the runtime pod again with a /dev/shm of this many MiB")
    p.add_argument("--logs", type=Path, help="keep each pod's whole log in this directory")
    p.add_argument("--model-dir", type=Path,
                   help="a tiny model made earlier (default: make one, ~20 s on an idle machine)")
    ns = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("images_check.py: run as root (network and mount namespaces)")
    which = ns.only or ["runtime", "activator", "autoscaler"]
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.machine()}",
        "podman": sh("podman", "--version").strip(),
        "images": {}, "pods": {}, "builds": {},
    }
    for ref in sh("podman", "images", "--format", "{{.Repository}}:{{.Tag}}").split():
        if ref.startswith(REPO + "/") or ref.startswith("localhost/torpor-base"):
            img = Image.inspect(ref)
            results["images"][ref] = {"size_mb": round(img.size / 1e6), "user": img.user,
                                      "entrypoint": img.entrypoint, "revision": img.revision}
    for item in ns.build_times:
        label, _, path = str(item).partition("=")
        rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
        results["builds"][label] = {r[0]: {"tag": r[1], "seconds": float(r[2])} for r in rows}

    with tempfile.TemporaryDirectory(prefix="torpor-imgchk-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        if "runtime" in which:
            model = work / "models"
            t0 = time.monotonic()
            if ns.model_dir:
                shutil.copytree(ns.model_dir, model / "tiny-llama")
            else:
                make_tiny_llama(model / "tiny-llama")
            model_s = round(time.monotonic() - t0, 1)
            subprocess.run(["chmod", "-R", "a+rX", str(model)], check=True)
            # The pod as the manifest has it first; then each --runtime-shm-mb, a /dev/shm of
            # that size (a Memory emptyDir mounted there).
            for shm in [None, *ns.runtime_shm_mb]:
                spec, info = runtime_pod(model)
                key = "runtime-cpu"
                if shm is not None:
                    spec.shm_mb, key = shm, f"runtime-cpu (/dev/shm {shm} MiB)"
                    spec.name = spec.env["HOSTNAME"] = f"{spec.name[:-5]}shm{shm}"
                image = Image.inspect(spec.image)
                base = f"http://{POD_IP}:{spec.port}/v1"

                def calls(base: str = base, model: str = info["served_model_name"]) -> Any:
                    return asyncio.run(openai_calls(base, model))

                res = run_one(spec, image, work, 300, calls)
                res["shm_mb"] = spec.shm_mb
                res["tiny_model_made_s"] = model_s
                results["pods"][key] = {**info, **res}
                print(json.dumps(results["pods"][key], indent=1)[-2500:], file=sys.stderr)
        if "activator" in which or "autoscaler" in which:
            with redis_on_host(work):
                if "activator" in which:
                    spec = platform_pod("activator", "torpor-activator-5c9d7-abcde", {})
                    image = Image.inspect(spec.image)

                    def unknown_route() -> dict[str, Any]:
                        r = httpx.post(f"http://{POD_IP}:{spec.port}/default/nope/v1/completions",
                                       json={"model": "x", "prompt": "a"}, timeout=10)
                        return {"unknown_service_status": r.status_code, "body": r.text[:200]}

                    res = run_one(spec, image, work, 60, unknown_route)
                    results["pods"]["activator"] = res
                    print(json.dumps(res, indent=1)[:2000], file=sys.stderr)
                if "autoscaler" in which:
                    ca = _self_signed_cert(work)
                    # kubelet's service-account mount and API server variables. First with
                    # nothing listening there (no API server runs here), then with the
                    # controller tests' API server emulator behind TLS at that address.
                    spec = autoscaler_pod("torpor-autoscaler-6b8f4-nokube", ca)
                    image = Image.inspect(spec.image)
                    res = run_one(spec, image, work, 45, None)
                    results["pods"]["autoscaler (no API server)"] = res
                    print(json.dumps(res, indent=1)[-2000:], file=sys.stderr)
                    with kube_api_over_tls(work) as lease_holder:
                        spec = autoscaler_pod("torpor-autoscaler-6b8f4-fghij", ca)

                        def lease() -> dict[str, Any]:
                            deadline = time.monotonic() + 30
                            while time.monotonic() < deadline and not lease_holder():
                                time.sleep(0.2)
                            return {"lease_holder": lease_holder()}

                        res = run_one(spec, image, work, 60, lease)
                        results["pods"]["autoscaler (API server emulator, TLS)"] = res
                        print(json.dumps(res, indent=1)[-2000:], file=sys.stderr)
        if ns.logs:
            ns.logs.mkdir(parents=True, exist_ok=True)
            for log in work.glob("*.log"):
                shutil.copy(log, ns.logs / log.name)

    ns.out.write_text(json.dumps(results, indent=2) + "\n")
    ns.out.with_suffix(".md").write_text(render_md(results))
    print(f"wrote {ns.out} and {ns.out.with_suffix('.md')}", file=sys.stderr)
    return 0


def _self_signed_cert(work: Path) -> str:
    """The API server's certificate for HOST_IP, which is also the pod's ca.crt."""
    key, crt = work / "kube.key", work / "kube.crt"
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
       "/CN=kubernetes", "-addext", f"subjectAltName=IP:{HOST_IP}", "-keyout", str(key),
       "-out", str(crt))
    return crt.read_text()


def autoscaler_pod(name: str, ca_pem: str) -> PodSpec:
    spec = platform_pod("autoscaler", name, {
        "KUBERNETES_SERVICE_HOST": HOST_IP, "KUBERNETES_SERVICE_PORT": str(KUBE_PORT)})
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    spec.files = {f"{sa}/token": "not-a-real-token", f"{sa}/namespace": "torpor-system",
                  f"{sa}/ca.crt": ca_pem}
    return spec


@contextlib.contextmanager
def kube_api_over_tls(work: Path) -> Iterator[Callable[[], str | None]]:
    """harness/kube_emulator.py (the controller tests' API server emulator,
    real wire format, no Knative controllers behind it) served over TLS on KUBE_PORT, in a thread
    of its own; yields a function reading the autoscaler Lease's holder."""
    from aiohttp import web

    from harness.kube_emulator import KubeEmulator

    emulator = KubeEmulator()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(work / "kube.crt", work / "kube.key")

    async def up() -> None:
        await emulator.start()
        runner = emulator._runner  # the emulator's own app, on one more (TLS) site
        assert runner is not None
        await web.TCPSite(runner, "0.0.0.0", KUBE_PORT, ssl_context=ctx).start()

    async def holder() -> str | None:
        lease = emulator.get("apis/coordination.k8s.io/v1", "leases", "torpor-system",
                             "torpor-autoscaler")
        return None if lease is None else str(lease["spec"].get("holderIdentity"))

    asyncio.run_coroutine_threadsafe(up(), loop).result(15)
    try:
        yield lambda: asyncio.run_coroutine_threadsafe(holder(), loop).result(5)
    finally:
        asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@contextlib.contextmanager
def redis_on_host(work: Path) -> Iterator[None]:
    """A real redis-server on the host side of the veth, where the pods' bus host name points.

    The veth exists only while a pod runs, so redis binds every interface on its own port;
    protected mode off because the pod is not loopback (test machine only)."""
    data = work / "redis"
    data.mkdir()
    proc = subprocess.Popen(
        ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
         "--save", "", "--appendonly", "no", "--dir", str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["redis-cli", "-p", "6379", "ping"], capture_output=True,
                              text=True).stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def render_md(r: dict[str, Any]) -> str:
    out = ["# Container images: built here and run as a pod would", "",
           f"Machine: {r['machine']}; {r['podman']}. Written by `benchmarks/images_check.py` "
           "(see its docstring for how a pod is made without a container runtime: own network "
           "namespace with a veth pair, the ENTRYPOINT as PID 1 as the image's USER, the "
           "manifest's args and Knative's environment, probes from the host to the pod address, "
           "SIGTERM to PID 1). No registry is reachable here, so every image is built on "
           "`localhost/torpor-base:bookworm-py3` (Debian bookworm + python3 3.11, made by "
           "`scripts/images.sh` with debootstrap); the GPU runtime has no CUDA base and no vLLM "
           "here (`-novllm`): it is built, not run.", "",
           "| image | size | user | entrypoint | source revision |", "|---|---:|---|---|---|"]
    for ref, i in sorted(r["images"].items()):
        out.append(f"| `{ref}` | {i['size_mb']} MB | {i['user']} | "
                   f"`{' '.join(i['entrypoint'])}` | {i['revision'][:12] or '-'} |")
    if r["builds"]:
        labels = list(r["builds"])
        out += ["", "Build times (`scripts/images.sh`, seconds; 2 shared cores): cold = empty "
                "layer cache; source changed = a rebuild after source edits (the dependency layer "
                "is reused); unchanged = nothing to do. local-base = making the Debian base once "
                "(debootstrap + import).", "",
                "| image | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        names = sorted({n for b in r["builds"].values() for n in b})
        for n in names:
            cells = [str(r["builds"][lab].get(n, {}).get("seconds", "-")) for lab in labels]
            out.append(f"| {n} | " + " | ".join(cells) + " |")
    for name, pod in r["pods"].items():
        out += ["", f"## {name}", "", f"- pod address `{pod['pod_address']}` (own network "
                "namespace, veth), args `" + " ".join(pod["args"]) + "`",
                f"- probe `{pod['probe']['url']}`: " + (
                    f"200 after {pod['probe']['ready_after_s']} s" if pod["probe"]["ready_after_s"]
                    else f"never 200 (last status {pod['probe']['last_status']})")]
        if "calls" in pod:
            out.append(f"- calls: `{json.dumps(pod['calls'])}`")
        out.append(f"- SIGTERM: `{json.dumps(pod['sigterm'])}`")
        if pod.get("errors"):
            out.append("- errors in its log: " + "; ".join(f"`{e}`" for e in pod["errors"]))
        out += ["", "Last lines of its log:", "", "```text", *pod["log_tail"][-6:], "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
