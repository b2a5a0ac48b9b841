"""`mvbatch review` as a real process on loopback: who it answers, what it records, what it serves.

The ledger is filled once by a real simulated run (`mvbatch run
jobs/demo.toml --yes`); each test starts its own `mvbatch review --port 0
--no-open` on it and speaks HTTP to it: requests without the token (or with
only the cookie, for a write) are refused, a verdict is a ledger event that
`mvbatch report` then writes into report.json, bodies are checked, files stay
inside the report folder, and the Host header must be the one printed.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from run_helpers import REPO, cli, cli_env, cli_popen

pytestmark = pytest.mark.slow

DEMO = REPO / "jobs" / "demo.toml"


@dataclass
class Demo:
    """A state and output folder a simulated run of jobs/demo.toml filled."""

    root: Path
    env: dict[str, str]

    @property
    def ledger(self) -> Path:
        return self.root / "state" / "ledger.sqlite"

    @property
    def folder(self) -> Path:
        return self.root / "outputs" / "demo"

    def keys(self) -> list[str]:
        with sqlite3.connect(self.ledger) as db:
            return [k for (k,) in db.execute("SELECT key FROM tasks ORDER BY rowid")]

    def verdicts(self, key: str) -> list[tuple[str | None, str | None]]:
        with sqlite3.connect(self.ledger) as db:
            return list(
                db.execute("SELECT verdict, note FROM verdicts WHERE key = ? ORDER BY id", (key,))
            )

    def video(self) -> str:
        with sqlite3.connect(self.ledger) as db:
            row = db.execute("SELECT path FROM outputs WHERE path IS NOT NULL LIMIT 1").fetchone()
        return str(row[0])


@dataclass
class Server:
    process: Any
    origin: str
    token: str
    output: Path

    @property
    def port(self) -> int:
        return int(self.origin.rsplit(":", 1)[1])

    def client(self, token: bool = True) -> httpx.Client:
        headers = {"X-Mvbatch-Token": self.token} if token else {}
        return httpx.Client(base_url=self.origin, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    root = tmp_path_factory.mktemp("demo")
    env = cli_env(root, key=None, MVBATCH_SIM_SPEED="1000")
    done = cli(["run", str(DEMO), "--yes"], env, root, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return Demo(root, env)


def start_review(demo: Demo, tmp_path: Path, *extra: str) -> Server:
    out = tmp_path / "review.out"
    process = cli_popen(
        ["review", str(DEMO), "--port", "0", "--no-open", *extra], demo.env, demo.root, out
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = out.read_text(encoding="utf-8", errors="replace").splitlines()
        url = next((line for line in lines if line.startswith("http://")), None)
        if url is not None:
            origin, _, token = url.partition("/?token=")
            return Server(process, origin, token, out)
        assert process.poll() is None, out.read_text(encoding="utf-8")
        time.sleep(0.05)
    raise AssertionError(f"no URL printed: {out.read_text(encoding='utf-8')}")


@pytest.fixture
def server(demo: Demo, tmp_path: Path) -> Iterator[Server]:
    running = start_review(demo, tmp_path)
    yield running
    running.process.kill()
    running.process.wait()


def test_the_url_is_loopback_with_a_long_random_token(server: Server, demo: Demo) -> None:
    assert server.origin.startswith("http://127.0.0.1:")
    assert server.port != 0
    assert len(server.token) >= 40
    # The token is printed once, in the URL line, and nowhere else.
    assert server.output.read_text(encoding="utf-8").count(server.token) == 1


def test_requests_without_the_token_are_refused(server: Server, demo: Demo) -> None:
    key = demo.keys()[0]
    body = {"key": key, "verdict": "approved", "note": None}
    with server.client(token=False) as client:
        for path in ("/", "/api/cards", "/api/report.json", f"/files/{demo.video()}", "/nowhere"):
            assert client.get(path).status_code == 403, path
            assert client.get(path, params={"token": "x" + server.token}).status_code == 403
            assert client.get(path, headers={"Cookie": "mvbatch_review=wrong"}).status_code == 403
        assert client.post("/api/verdict", json=body).status_code == 403
        refused = client.post("/api/verdict", json=body, headers={"X-Mvbatch-Token": "wrong"})
        assert refused.status_code == 403
        assert server.token not in refused.text
    assert demo.verdicts(key) == []


def test_the_page_sets_a_strict_cookie_that_cannot_write_a_verdict(
    server: Server, demo: Demo
) -> None:
    key = demo.keys()[1]
    with server.client(token=False) as client:
        page = client.get("/", params={"token": server.token})
        assert page.status_code == 200
        assert f'<meta name="mvbatch-token" content="{server.token}">' in page.text
        cookie = page.headers["set-cookie"]
        assert cookie.startswith(f"mvbatch_review={server.token};")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Path=/" in cookie
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        # The cookie lets the page read (its media, its cards)...
        jar = {"Cookie": f"mvbatch_review={server.token}"}
        assert client.get("/api/cards", headers=jar).status_code == 200
        assert client.get(f"/files/{demo.video()}", headers=jar).status_code == 200
        # ...but not another site's request riding on it,
        cross = client.get("/api/cards", headers={**jar, "Sec-Fetch-Site": "same-site"})
        assert cross.status_code == 403
        # and never a write: that needs the header (CSRF).
        body = {"key": key, "verdict": "rejected", "note": "forged"}
        assert client.post("/api/verdict", json=body, headers=jar).status_code == 403
        assert (
            client.post(
                "/api/verdict", json=body, params={"token": server.token}, headers=jar
            ).status_code
            == 403
        )
    assert demo.verdicts(key) == []


def test_a_verdict_is_a_ledger_event_that_survives_kill_9_and_reaches_report_json(
    server: Server, demo: Demo, tmp_path: Path
) -> None:
    key = demo.keys()[2]
    with server.client() as client:
        first = client.post("/api/verdict", json={"key": key, "verdict": "approved", "note": "ok"})
        assert first.status_code == 200, first.text
        assert first.json()["verdict"] == "approved"
        second = client.post(
            "/api/verdict", json={"key": key, "verdict": "rejected", "note": "the car <b>melts</b>"}
        )
        assert second.status_code == 200, second.text
        answer = second.json()
        assert set(answer) == {"key", "verdict", "note", "at"}
        assert (answer["key"], answer["verdict"]) == (key, "rejected")
        # Saving a note alone keeps the verdict.
        third = client.post("/api/verdict", json={"key": key, "note": "the car melts at 3 s"})
        assert third.json()["verdict"] == "rejected"
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    assert demo.verdicts(key) == [
        ("approved", "ok"),
        ("rejected", "the car <b>melts</b>"),
        ("rejected", "the car melts at 3 s"),
    ]
    done = cli(["report", str(DEMO), "--no-download"], demo.env, demo.root)
    assert done.returncode == 0, done.stdout + done.stderr
    tasks = {t["key"]: t for t in json.loads((demo.folder / "report.json").read_text())["tasks"]}
    assert (tasks[key]["verdict"], tasks[key]["note"]) == ("rejected", "the car melts at 3 s")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_cleanly_and_writes_the_reports_with_the_verdicts(
    server: Server, demo: Demo, stop: signal.Signals
) -> None:
    key = demo.keys()[3]
    with server.client() as client:
        answer = client.post("/api/verdict", json={"key": key, "verdict": "approved"})
        assert answer.status_code == 200
    server.process.send_signal(stop)
    assert server.process.wait(timeout=30) == 0, server.output.read_text(encoding="utf-8")
    tasks = {t["key"]: t for t in json.loads((demo.folder / "report.json").read_text())["tasks"]}
    assert tasks[key]["verdict"] == "approved"
    assert "Traceback" not in server.output.read_text(encoding="utf-8")


def test_cards_are_every_take_by_key_and_change_with_a_verdict(server: Server, demo: Demo) -> None:
    key = demo.keys()[4]
    with server.client() as client:
        first = client.get("/api/cards")
        assert first.status_code == 200
        document = first.json()
        assert set(document) == {"version", "layout", "cards"}
        assert set(document["cards"]) == set(demo.keys())
        assert f'data-key="{key}"' in document["cards"][key]
        # Nothing changed: the browser's revalidation costs a 304.
        again = client.get("/api/cards", headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304
        client.post("/api/verdict", json={"key": key, "verdict": "approved"}).raise_for_status()
        after = client.get("/api/cards", headers={"If-None-Match": first.headers["etag"]})
        assert after.status_code == 200
        changed = after.json()
        assert changed["version"] != document["version"]
        assert changed["layout"] == document["layout"]
        assert 'data-verdict="approved"' in changed["cards"][key]
        report = client.get("/api/report.json").json()
        assert {t["key"]: t["verdict"] for t in report["tasks"]}[key] == "approved"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b'{"verdict": "approved"}', 400),
        (b'{"key": "KEY"}', 400),
        (b'{"key": "KEY", "verdict": "maybe"}', 400),
        (b'{"key": "KEY", "verdict": true}', 400),
        (b'{"key": "KEY", "verdict": null, "note": 5}', 400),
        (b'{"key": "KEY", "verdict": "approved", "extra": 1}', 400),
        (json.dumps({"key": "KEY", "verdict": None, "note": "x" * 2001}).encode(), 400),
        (b'{"key": "KEY", "verdict": "approved", "note": "' + b"x" * 20_000 + b'"}', 400),
        (b'{"key": "mvb1-00000000000000000000000000000000", "verdict": "approved"}', 404),
        (json.dumps({"key": "KEY", "verdict": None, "note": "x" * 2000}).encode(), 200),
    ],
    ids=[
        "not-json",
        "not-object",
        "no-key",
        "nothing-to-record",
        "bad-verdict",
        "verdict-not-text",
        "note-not-text",
        "unknown-field",
        "note-too-long",
        "body-too-large",
        "unknown-key",
        "note-at-the-limit",
    ],
)
def test_bad_bodies_are_400_and_unknown_keys_404(
    server: Server, demo: Demo, body: bytes, status: int
) -> None:
    key = demo.keys()[5]
    with server.client() as client:
        answer = client.post(
            "/api/verdict",
            content=body.replace(b"KEY", key.encode()),
            headers={"Content-Type": "application/json"},
        )
    assert answer.status_code == status, answer.text
    if status != 200:
        assert all(note is None or len(note) <= 2000 for _, note in demo.verdicts(key))


def test_another_origin_cannot_write_even_with_the_token(server: Server, demo: Demo) -> None:
    key = demo.keys()[6]
    with server.client() as client:
        for origin in ("http://evil.test", "null", f"http://localhost:{server.port + 1}"):
            answer = client.post(
                "/api/verdict",
                json={"key": key, "verdict": "approved"},
                headers={"Origin": origin},
            )
            assert answer.status_code == 403, origin
        own = client.post(
            "/api/verdict",
            json={"key": key, "verdict": "approved"},
            headers={"Origin": server.origin},
        )
        assert own.status_code == 200
    assert demo.verdicts(key) == [("approved", None)]


def raw_get(server: Server, path: str, host: str | None = None) -> tuple[int, bytes]:
    """A GET with the path exactly as written (httpx would normalise the dots away)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", f"127.0.0.1:{server.port}" if host is None else host)
        connection.putheader("X-Mvbatch-Token", server.token)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_files_stay_inside_the_report_folder(server: Server, demo: Demo) -> None:
    secret = demo.root / "outside.txt"
    secret.write_text("not yours", encoding="utf-8")
    (demo.folder / "link.txt").symlink_to(secret)
    (demo.folder / "videos" / "link-dir").symlink_to(demo.root, target_is_directory=True)
    (demo.folder / "videos" / ".hidden.mp4.part").write_bytes(b"partial")
    video = demo.video()
    size = (demo.folder / video).stat().st_size
    with server.client() as client:
        whole = client.get(f"/files/{video}")
        assert whole.status_code == 200
        assert whole.headers["content-type"] == "video/mp4"
        assert len(whole.content) == size
        part = client.get(f"/files/{video}", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.content == whole.content[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{size}"
    for path in (
        "/files/../outside.txt",
        "/files/%2e%2e/outside.txt",
        "/files/..%2foutside.txt",
        "/files/videos/../../outside.txt",
        "/files//etc/passwd",
        "/files/link.txt",
        "/files/videos/link-dir/outside.txt",
        "/files/videos/.hidden.mp4.part",
        "/files/videos",
        f"/files/{video}/",
    ):
        status, content = raw_get(server, path)
        assert status in (403, 404), path
        assert b"not yours" not in content, path


def test_only_the_printed_host_is_answered(server: Server) -> None:
    for host in (f"evil.test:{server.port}", "127.0.0.1", f"127.0.0.1:{server.port + 1}", ""):
        status, _ = raw_get(server, "/api/cards", host=host)
        assert status in (400, 403), host  # h11 itself may refuse an empty Host
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", f"[::1]:{server.port}"):
        status, _ = raw_get(server, "/api/cards", host=host)
        assert status == 200, host


def test_a_busy_port_is_a_clear_error(demo: Demo) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = cli(["review", str(DEMO), "--port", str(port), "--no-open"], demo.env, demo.root)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "--port" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "token=" not in done.stdout
