"""`review`: which manifest side the review speaks of, the server on its socket, the token.

Owns: `prepare_review` (the side of the manifest's last run, like `report`;
the plan; the ledger, opened once for the server's life; a fresh random
token; the socket bound, so a busy port is said before anything else),
`Review.serve` (until Ctrl-C) and `Review.finish` (when verdicts were given,
the report files written again so report.json and the static report.html
carry them), and opening the page in a browser.

Must not: print (the CLI says the URL), or write anything but verdicts (the
server, through the ledger) and, at the end, what `report.command.write_report`
writes.
"""

from __future__ import annotations

import secrets
import socket
import threading
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette

from mvbatch.commands import folders
from mvbatch.commands.planning import build_plan, default_env, manifest_of
from mvbatch.commands.selection import with_rerolls
from mvbatch.ledger import Ledger, open_ledger
from mvbatch.plan import manifest
from mvbatch.plan.planner import Plan
from mvbatch.report.command import ReportResult, report_folder_of, write_report
from mvbatch.review import server
from mvbatch.review.access import Access, is_loopback
from mvbatch.review.app import create_app
from mvbatch.review.sheet import Sheet
from mvbatch.settings import Settings

TOKEN_BYTES = 32  # 256 bits, URL-safe base64: 43 characters


@dataclass
class Review:
    """A review server, bound and ready to serve; close it after use."""

    settings: Settings
    plan: Plan
    env: str
    ledger: Ledger
    sheet: Sheet
    url: str  # with the token: the one line a person needs
    loopback: bool  # False: reachable from other machines (--host)
    sock: socket.socket = field(repr=False)
    app: Starlette = field(repr=False)

    @property
    def takes(self) -> int:
        return len(self.plan.tasks)

    def serve(self) -> None:
        """Serve until Ctrl-C, then return normally (SIGTERM ends the process once
        uvicorn has shut down)."""
        server.serve(self.app, self.sock)

    def finish(self) -> ReportResult | None:
        """If verdicts were given, write the reports again (no download) so they carry them."""
        if not self.sheet.verdicts_given:
            return None
        folders.writable(self.settings.output_dir, folders.OUTPUT, self.plan.name)
        return write_report(self.settings, self.ledger, self.plan.name, self.env, plan=self.plan)

    def close(self) -> None:
        self.sock.close()
        self.ledger.close()


def prepare_review(path: Path, settings: Settings, *, host: str, port: int) -> Review:
    """Everything `mvbatch review` needs before it serves: plan, ledger side, socket, token."""
    name = manifest.load(manifest_of(path)).manifest.name
    folders.writable(settings.state_dir, folders.STATE)  # verdicts are recorded there
    folders.readable(settings.output_dir, folders.OUTPUT)
    ledger = open_ledger(settings.ledger_location())
    try:
        run = ledger.last_run(name)
        env = str(run["env"]) if run is not None else default_env(settings)
        the_plan = build_plan(path, settings, env)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        sock = server.bind(host, port)
        real_port = sock.getsockname()[1]
        sheet = Sheet(
            ledger,
            the_plan,
            env,
            report_folder_of(settings, name),
            token,
            plan_for=lambda plan, rows: with_rerolls(plan, rows)[0],
        )
        app = create_app(sheet, Access.bound(token, host, real_port))
    except BaseException:
        ledger.close()
        raise
    return Review(
        settings,
        the_plan,
        env,
        ledger,
        sheet,
        f"{server.origin(sock, host)}/?token={token}",
        is_loopback(host),
        sock,
        app,
    )


def open_browser(url: str) -> None:
    """Open `url` in the user's browser, without waiting for it (a console browser may
    hold the terminal; none at all is fine: the URL is printed)."""
    threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
