"""A stand-in for ``python -m runtime serve`` in the local actuator's tests: no vLLM.

It takes the runtime's arguments, serves ``/health`` and vLLM-shaped ``/metrics`` with
http.server and prints the startup line. The ``--model`` value picks a behaviour:
``fail`` exits 3 with an error on stderr, ``never-ready`` answers /health with 503,
``stubborn`` ignores SIGTERM, ``with-child`` starts a child process (its pid goes to
``$FAKE_CHILD_PIDFILE``) the way vLLM starts its engine core, ``sickens`` answers /health with
500 once the file ``$FAKE_SICK_FILE`` exists. ``$FAKE_RUNNING`` sets the running-requests gauge
(default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} %s
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model")
    parser.add_argument("--served-model-name")
    parser.add_argument("--replica-id")
    parser.add_argument("--launched-at", type=float)
    args, _ = parser.parse_known_args()
    print(f"fake runtime argv: {json.dumps(sys.argv[1:])}", flush=True)
    print(f"fake runtime env TORPOR_HOME={os.environ.get('TORPOR_HOME')}", flush=True)

    if args.model == "fail":
        print("loading weights from /nowhere", flush=True)
        print("ValueError: no model weights at /nowhere", file=sys.stderr, flush=True)
        sys.exit(3)
    if args.model == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.model == "with-child":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.environ["FAKE_CHILD_PIDFILE"], "w") as f:
            f.write(str(child.pid))
    healthy = args.model != "never-ready"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                sick = args.model == "sickens" and os.path.exists(os.environ["FAKE_SICK_FILE"])
                self._reply(500 if sick else 200 if healthy else 503, b"")
            elif self.path == "/metrics":
                running = os.environ.get("FAKE_RUNNING", "1.0")
                self._reply(200, (METRICS % running).encode())
            else:
                self._reply(404, b"")

        def do_POST(self) -> None:
            # Enough of an OpenAI endpoint for routing tests: says which replica answered.
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            body = {"replica_id": args.replica_id, "path": self.path, "object": "text_completion"}
            self._reply(200, json.dumps(body).encode())

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    launched = args.launched_at or time.time()
    phases = {"process_started": 0.01, "imports_done": 0.02, "engine_ready": time.time() - launched}
    print(
        json.dumps(
            {
                "event": "startup",
                "replica_id": args.replica_id,
                "launched_at": launched,
                "warm": False,
                "phases": phases,
            }
        ),
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
