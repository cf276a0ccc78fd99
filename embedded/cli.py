"""The ``torpor`` command line.

Start-up is most of what ``torpor deploy`` and ``torpor status`` cost, so each command imports
what it needs when it runs: the platform (``torpor up``: uvloop, uvicorn, the activator, the
autoscaler) only for ``up``, the HTTP client only for the commands that call the control API.
Measured on the 2-core test machine (issue 18): importing this module went from 117 ms to 25 ms
(``python -X importtime``), a whole ``torpor deploy`` or ``torpor status`` process from 150 ms of
CPU to 112 ms; what remains is Python itself and httpx (~55 ms, ``embedded.client``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from embedded.state import ControlAddress, StateDir, default_home
from torpor.logs import configure_logging

if TYPE_CHECKING:
    from embedded.client import ControlClient

EXAMPLE_MANIFEST = Path(__file__).resolve().parent.parent / "manifests/examples/tiny-chat.yaml"


class _LimitDefault:
    """A default from ``torpor.manifest.limits``, read only when ``up`` runs or help is shown:
    importing the manifest package (its YAML parser) is a fifth of a bare CLI start."""

    def __init__(self, name: str) -> None:
        self.name = name

    def value(self) -> int:
        from torpor.manifest import limits

        value: int = getattr(limits, self.name)
        return value

    def __str__(self) -> str:
        return str(self.value())


class _Parser(argparse.ArgumentParser):
    """Resolves ``_LimitDefault``s once parsed, so a command sees plain ints."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        for name, value in vars(parsed).items():
            if isinstance(value, _LimitDefault):
                setattr(parsed, name, value.value())
        return parsed, rest


def _client(args: argparse.Namespace) -> ControlClient:
    from embedded.client import ControlClient

    return ControlClient.from_state(StateDir(args.home))


def _cmd_up(args: argparse.Namespace) -> int:
    import uvloop

    from embedded.up import EmbeddedConfig, run_embedded
    from torpor.manifest.limits import ScaleLimits

    configure_logging(verbose=args.verbose)
    try:
        limits = ScaleLimits(per_revision=args.max_scale_per_revision, total=args.max_replicas)
    except ValueError as e:
        print(f"torpor up: {e}", file=sys.stderr)
        return 2
    config = EmbeddedConfig(
        home=args.home,
        host=args.host,
        port=args.port,
        control_host=args.control_host,
        control_port=args.control_port,
        domain=args.domain,
        warm_pool=args.warm_pool,
        limits=limits,
    )

    def ready(address: ControlAddress) -> None:
        print(f"torpor is up (pid {address.pid})", flush=True)
        print(f"  activator:   {address.activator_url}/<namespace>/<service>/v1/...", flush=True)
        print(f"  control API: {address.control_url} (token in {args.home}/control.token)")
        print(f"  state:       {args.home}", flush=True)
        print("Deploy a model with: torpor deploy -f manifests/examples/tiny-chat.yaml", flush=True)

    # uvloop, as on Kubernetes: socket work is a third of the activator's cost per request.
    uvloop.run(run_embedded(config, on_ready=ready))
    print("torpor stopped; every replica it started has exited.", flush=True)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from embedded.bulk import documents
    from embedded.client import ControlError, NotRunning

    path: Path = args.file
    try:
        stdin = sys.stdin.buffer.read() if str(path) == "-" else None
        docs = documents(path, stdin)
    except OSError as e:
        print(f"torpor deploy: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"torpor deploy: {e}", file=sys.stderr)
        return 2
    failed = 0
    with _client(args) as client:
        for doc in docs:
            # One document, one deploy: each is atomic, and a refused one stops no other.
            try:
                result = client.deploy(doc.data, source=doc.source)
            except NotRunning:
                raise
            except ControlError as e:
                failed += 1
                where = f"{doc.source}: " if len(docs) > 1 else ""
                print(f"torpor deploy: {where}{e}", file=sys.stderr)
                continue
            verb = "created revision" if result["created_revision"] else "unchanged, revision"
            print(f"service/{result['service']} {verb} {result['latest_revision']}")
            print(f"  URL:  {result['url']}/v1/...")
            print(f"  Host: {result['host']}")
    if failed and len(docs) > 1:
        print(f"torpor deploy: {failed} of {len(docs)} documents refused", file=sys.stderr)
    return 1 if failed else 0


def _cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.delete(args.namespace, args.service)
    print(f"service/{result['deleted']} deleted")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        while True:
            from embedded.report import filter_status

            document = filter_status(
                client.status(),
                namespace=args.namespace,
                service=args.service,
                active=args.active,
            )
            if args.json:
                print(json.dumps(document, indent=2))
            else:
                if args.watch:
                    print("\x1b[2J\x1b[H", end="")
                from embedded.report import render_table

                print(render_table(document))
            if not args.watch:
                return 0
            time.sleep(args.watch)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from embedded.doctor import DoctorOptions, document, render, run_doctor

    report = run_doctor(DoctorOptions(
        home=args.home, host=args.host, port=args.port, control_port=args.control_port,
        reprobe=args.reprobe, dev=args.dev,
    ))
    print(json.dumps(document(report), indent=2) if args.json else render(report))
    return 1 if report.problems else 0


def _cmd_make_tiny(args: argparse.Namespace) -> int:
    from runtime.tinymodel import make_tiny_llama

    out = args.out or StateDir(args.home).models / "tiny-llama"
    path = make_tiny_llama(out)
    print(f"tiny Llama ready in {path}")
    return 0


def _cmd_make_tiny_adapter(args: argparse.Namespace) -> int:
    from runtime.tinyadapter import make_tiny_adapter

    out = args.out or StateDir(args.home).models / args.name
    path = make_tiny_adapter(out, seed=args.seed, rank=args.rank)
    print(f"tiny LoRA adapter ready in {path} (declare it as {args.name}=/models/{args.name})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from embedded.demo import run_demo

    return run_demo(
        home=args.home, manifest=args.file, port=args.port, control_port=args.control_port
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="torpor",
        description="Serverless, scale-to-zero LLM serving. Deploy Knative Service manifests; "
        "each revision scales on its own, down to zero.",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=default_home(),
        help="state directory (default: $TORPOR_HOME or ~/.torpor)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the embedded platform in the foreground")
    up.add_argument("--host", default="127.0.0.1", help="activator address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="activator port (default 8080)")
    up.add_argument("--control-host", default="127.0.0.1", help="control API address")
    up.add_argument("--control-port", type=int, default=8081, help="control API port (8081)")
    up.add_argument("--domain", default="example.com", help="domain of host-form URLs")
    up.add_argument(
        "--warm-pool",
        type=int,
        default=1,
        metavar="N",
        help="standby runtime processes with vLLM already imported, so a cold start only loads "
        "the model (default 1; 0 starts every replica from scratch)",
    )
    up.add_argument(
        "--max-scale-per-revision",
        type=int,
        default=_LimitDefault("DEFAULT_MAX_SCALE_PER_REVISION"),
        metavar="N",
        help="most replicas of one revision: a manifest's min-, max-, initial- or "
        "activation-scale above it is refused, and max-scale 0 (no bound) means N "
        "(default %(default)s)",
    )
    up.add_argument(
        "--max-replicas",
        type=int,
        default=_LimitDefault("DEFAULT_MAX_REPLICAS_TOTAL"),
        metavar="N",
        help="most replicas kept running with no demand, all services together (the sum of "
        "min-scale over routed revisions); a deploy that would pass it is refused "
        "(default %(default)s)",
    )
    up.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    up.set_defaults(func=_cmd_up)

    deploy = sub.add_parser(
        "deploy",
        help="deploy Knative Service manifests",
        description="Deploy Knative Service manifests: a file, a file of several YAML documents "
        "(separated by ---), or a directory of *.yaml/*.yml files. Each document is deployed on "
        "its own: one that is refused changes nothing and stops no other.",
    )
    deploy.add_argument(
        "-f", "--file", type=Path, required=True, help="manifest file, directory, or - (stdin)"
    )
    deploy.set_defaults(func=_cmd_deploy)

    delete = sub.add_parser("delete", help="delete a service and stop its replicas")
    delete.add_argument("service")
    delete.add_argument("-n", "--namespace", default="default")
    delete.set_defaults(func=_cmd_delete)

    status = sub.add_parser("status", help="revisions, replicas and queues at a glance")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument("service", nargs="?", default=None, help="only this service's revisions")
    status.add_argument("-n", "--namespace", default=None, help="only this namespace")
    status.add_argument(
        "--active",
        action="store_true",
        help="only revisions not at rest (a replica, or requests held or in flight)",
    )
    status.add_argument(
        "-w",
        "--watch",
        type=float,
        nargs="?",
        const=1.0,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 1)",
    )
    status.set_defaults(func=_cmd_status)

    doctor = sub.add_parser(
        "doctor",
        help="check what this machine offers: CPU and vLLM's engine path, memory, disk, ports",
        description="Check what this machine offers torpor, one line per check: ok, problem "
        "(with what to do) or note. The CPU, the ISA extensions torch reports and the engine "
        "path vLLM's CPU attention will take come from a probe that runs vLLM's kernels in child "
        "processes once per machine (kept under $TORPOR_HOME/engine); then memory, disk, the "
        "platform's ports, the vLLM version, torch extras that break transformers, and the "
        "tools the tests and benchmarks use. Exits 1 when there is a problem.",
    )
    doctor.add_argument(
        "--json", action="store_true", help="one JSON object, with the probe's facts"
    )
    doctor.add_argument(
        "--reprobe", action="store_true", help="probe the CPU engine again, not the cached answer"
    )
    doctor.add_argument("--host", default="127.0.0.1", help="address torpor up will listen on")
    doctor.add_argument("--port", type=int, default=8080, help="activator port to check (8080)")
    doctor.add_argument(
        "--control-port", type=int, default=8081, help="control API port to check (8081)"
    )
    doctor.add_argument(
        "--dev",
        action="store_true",
        help="also require what the tests and benchmarks use (redis-server, nginx)",
    )
    doctor.set_defaults(func=_cmd_doctor)

    models = sub.add_parser("models", help="models for demos and tests")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    tiny = models_sub.add_parser("make-tiny", help="make the tiny random Llama used by tiny-chat")
    tiny.add_argument(
        "--out", type=Path, default=None, help="default: $TORPOR_HOME/models/tiny-llama"
    )
    tiny.set_defaults(func=_cmd_make_tiny)
    adapter = models_sub.add_parser(
        "make-tiny-adapter",
        help="make a random LoRA adapter (PEFT format) for the tiny Llama",
    )
    adapter.add_argument("name", help="directory name under $TORPOR_HOME/models")
    adapter.add_argument("--seed", type=int, default=1, help="different seeds, different answers")
    adapter.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8)")
    adapter.add_argument("--out", type=Path, default=None, help="default: $TORPOR_HOME/models/NAME")
    adapter.set_defaults(func=_cmd_make_tiny_adapter)

    demo = sub.add_parser(
        "demo",
        help="the whole tour: start the platform, deploy tiny-chat, cold start from zero, "
        "call it, watch it scale back to zero, stop",
    )
    demo.add_argument("-f", "--file", type=Path, default=EXAMPLE_MANIFEST)
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--control-port", type=int, default=8081)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:
        if "embedded.client" in sys.modules:  # only a command that imported it raises it
            from embedded.client import ControlError

            if isinstance(e, ControlError):
                print(f"torpor {args.command}: {e}", file=sys.stderr)
                return 1
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
