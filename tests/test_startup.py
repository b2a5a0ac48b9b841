"""Start-up: a command imports what it needs when it needs it.

`mvbatch --help` loads Typer and the CLI, nothing of the stages and none of the
heavy libraries; `plan` loads httpx only for a reference video at a URL, and
structlog only when something is logged. Each command runs in a fresh
process whose loaded modules are then listed. (BENCHMARKS.md, "Start-up",
has the CPU times; `benchmarks/startup.py` measures them.)
"""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from mp4_fixtures import write_mp4

from mvbatch.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "jobs" / "demo.toml"

# Run the CLI as the console script does, then write the names of the loaded modules.
DRIVER = """
import json, sys
from mvbatch.cli import main
out, sys.argv = sys.argv[1], ["mvbatch", *sys.argv[2:]]
try:
    main()
except SystemExit as done:
    code = done.code
with open(out, "w", encoding="utf-8") as file:
    json.dump({"code": code, "modules": sorted(sys.modules)}, file)
"""

HEAVY = (
    "asyncio",
    "httpx",
    "jsonschema",
    "pydantic",
    "pydantic_settings",
    "rich",
    "sqlite_utils",
    "structlog",
    "mvbatch.commands",
    "mvbatch.ledger",
    "mvbatch.plan",
    "mvbatch.settings",
)


def loaded(tmp_path: Path, *args: str) -> set[str]:
    """The top-level packages and mvbatch subpackages `mvbatch ARGS` loaded."""
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(out), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.exists(), done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["code"] == 0, done.stdout + done.stderr
    names: set[str] = set()
    for name in result["modules"]:
        parts = name.split(".")
        names.add(parts[0])
        if parts[0] == "mvbatch" and len(parts) > 1:
            names.add(".".join(parts[:2]))
    return names


def test_help_loads_no_stage_and_no_heavy_library(tmp_path: Path) -> None:
    assert loaded(tmp_path, "--help") & set(HEAVY) == set()


def test_plan_without_urls_loads_neither_httpx_nor_structlog(tmp_path: Path) -> None:
    names = loaded(tmp_path, "plan", str(DEMO))
    assert "mvbatch.plan" in names  # it did plan
    assert names & {"httpx", "structlog"} == set()


def test_logging_configured_before_structlog_is_loaded_applies_at_the_first_event(
    tmp_path: Path,
) -> None:
    code = """
import io, sys
from pathlib import Path
from mvbatch import logs
stream = io.StringIO()
logs.configure("json", "warning", log_file=Path("logs/mvbatch.jsonl"), stream=stream)
log = logs.get("mvbatch.test")
assert "structlog" not in sys.modules
log.info("startup.quiet")
log.warning("startup.checked", answer=42)
sys.stdout.write(stream.getvalue())
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    (line,) = done.stdout.splitlines()
    assert json.loads(line) | {"timestamp": ""} == {
        "event": "startup.checked",
        "answer": 42,
        "level": "warning",
        "timestamp": "",
    }
    in_file = (tmp_path / "logs" / "mvbatch.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["event"] for x in in_file] == ["startup.quiet", "startup.checked"]


@pytest.fixture
def served_video(tmp_path: Path) -> Iterator[str]:
    """A 12 s reference video on a loopback HTTP server: its URL."""
    write_mp4(tmp_path / "www" / "ref.mp4", 12)
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ref.mp4"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_reference_video_at_a_url_is_still_probed(tmp_path: Path, served_video: str) -> None:
    from mvbatch.commands.planning import build_plan

    path = tmp_path / "m.toml"
    path.write_text(
        f"""
name = "m"
[[shots]]
id = "dance"
model = "kling-v3-motion-control"
[shots.input]
image_url = "https://example.com/a.png"
video_url = "{served_video}"
character_orientation = "video"
mode = "std"
""",
        encoding="utf-8",
    )
    planned = build_plan(path, Settings(MVBATCH_STATE_DIR=tmp_path / "state"), "sim")
    assert planned.tasks[0].estimate.seconds == Decimal("12.000")
    assert not planned.tasks[0].estimate.upper_bound
