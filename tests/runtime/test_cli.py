import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_tiny_then_cache_ensure_warm_list(tmp_path: Path) -> None:
    model = Path(run("make-tiny", str(tmp_path / "tiny")).strip())
    assert (model / "config.json").exists()
    cache = str(tmp_path / "cache")
    ensured = json.loads(run("cache", "ensure", model.as_uri(), "--cache-dir", cache))
    warmed = json.loads(run("cache", "warm", str(model), "--cache-dir", cache, "--verify"))
    assert ensured["path"] == warmed["path"]
    assert warmed["prefetched_bytes"] > 0
    listing = run("cache", "list", "--cache-dir", cache).splitlines()
    entries = [json.loads(line) for line in listing]
    assert len(entries) == 1 and entries[0]["bytes"] == warmed["prefetched_bytes"]


def test_cache_commands_never_import_the_engine(tmp_path: Path) -> None:
    code = (
        "import sys; from runtime.__main__ import main; "
        f"main(['cache', 'list', '--cache-dir', {str(tmp_path)!r}]); "
        "print('torch' in sys.modules or 'vllm' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


def test_unknown_command_fails() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runtime", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2


def test_serve_with_a_missing_model_fails_fast_with_the_reason(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "serve",
            "--model",
            str(tmp_path / "absent"),
            "--port",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "model source is not a directory" in out.stderr.strip().splitlines()[-1]
