"""The contact sheet a review server shows, read from the ledger; the verdicts it records.

Owns: `Sheet`: the manifest's report built from the ledger (the plan's tasks,
their outputs on disk, the latest verdicts) whenever the page or the cards are
asked for; the cards by task key (`/api/cards`), cached on a fingerprint of
the ledger so that a page polling every two seconds costs three reads while
nothing changes; recording a verdict on one of this manifest's takes.

One ledger connection serves every request, one call at a time (a lock):
Starlette runs the routes' blocking work in its thread pool, and a SQLite
connection is not to be used by two threads at once. Every verdict is one
committed ledger step (`Ledger.record_verdict`), so it survives what the
ledger survives (a `kill -9` of this process, another process writing).

Must not: write anything but verdicts, change a task, or render markup of its
own: the page and the cards are `report.html`'s (`mvbatch.report.html`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mvbatch.ledger import Ledger, TaskRow, Verdict
from mvbatch.plan.planner import Plan
from mvbatch.report.build import build_report
from mvbatch.report.formats import json_text
from mvbatch.report.html import ReviewMode, card_fragments, contact_sheet, layout_signature
from mvbatch.report.model import Report

NOTE_LIMIT = 2000  # characters of a note


class UnknownTake(KeyError):
    """The key is not a task of this manifest (on this side of the ledger)."""


@dataclass(frozen=True, slots=True)
class Cards:
    """`/api/cards`'s answer: `version` changes with the ledger, `layout` with the grid."""

    version: str
    layout: str
    body: bytes  # the JSON document: {"version", "layout", "cards": {key: html}}


class Sheet:
    """One manifest's side of the ledger, as the review page sees it."""

    def __init__(
        self,
        ledger: Ledger,
        plan: Plan,
        env: str,
        folder: Path,
        token: str,
        *,
        plan_for: Callable[[Plan, Sequence[TaskRow]], Plan] | None = None,
    ) -> None:
        self.ledger = ledger
        self.plan = plan
        # The plan with what the ledger adds to it now (takes re-rolled since
        # the review started): given by the command, which knows how.
        self.plan_for = plan_for or (lambda plan, _rows: plan)
        self.name = plan.name
        self.env = env
        self.folder = folder
        self.review = ReviewMode(token=token)
        self.verdicts_given = 0
        self._ledger_lock = threading.Lock()
        self._cards_lock = threading.Lock()
        self._cards: tuple[str, Cards] | None = None  # (fingerprint, cards)

    def report(self) -> Report:
        """The report as the ledger has it now (no download, nothing written)."""
        with self._ledger_lock:
            rows = self.ledger.tasks(self.env, self.name)
            outputs = self.ledger.manifest_outputs(self.env, self.name)
            verdicts = self.ledger.verdicts(self.env, self.name)
        plan = self.plan_for(self.plan, rows)
        return build_report(
            self.name, self.env, rows, outputs, self.folder, plan=plan, verdicts=verdicts
        )

    def page(self) -> str:
        return contact_sheet(self.report(), self.folder, self.review)

    def report_json(self) -> str:
        return json_text(self.report())

    def fingerprint(self) -> str:
        """Changes whenever a card may: a task's status, a video landing, a verdict.

        Three reads of the ledger: the tasks (each row's `updated_at` moves with
        its status), the succeeded tasks still without their videos, the
        latest verdicts.
        """
        with self._ledger_lock:
            rows = self.ledger.tasks(self.env, self.name)
            waiting = self.ledger.undownloaded(self.env, self.name)
            verdicts = self.ledger.verdicts(self.env, self.name)
        digest = hashlib.blake2b(digest_size=16)
        for row in rows:
            digest.update(f"{row.key}\0{row.status}\0{row.updated_at}\n".encode())
        digest.update(json.dumps(sorted(waiting)).encode())
        digest.update(json.dumps(sorted((k, v.at) for k, v in verdicts.items())).encode())
        return digest.hexdigest()

    def cards(self) -> Cards:
        """Every take's card by key, rebuilt only when the ledger's fingerprint moved."""
        with self._cards_lock:
            fingerprint = self.fingerprint()
            if self._cards is not None and self._cards[0] == fingerprint:
                return self._cards[1]
            report = self.report()
            layout = layout_signature(report)
            cards = card_fragments(report, self.folder, self.review)
            body = json.dumps(
                {"version": fingerprint, "layout": layout, "cards": cards},
                ensure_ascii=False,
                separators=(",", ":"),
            ).encode()
            self._cards = (fingerprint, Cards(fingerprint, layout, body))
            return self._cards[1]

    def record(
        self,
        key: str,
        verdict: str | None,
        note: str | None,
        *,
        keep_verdict: bool = False,
        keep_note: bool = False,
    ) -> Verdict:
        """Append a verdict on one of this manifest's takes; `UnknownTake` for another key.

        `keep_verdict` / `keep_note`: the request left that field out, so the
        new event repeats the latest one's (saving a note keeps the verdict).
        `ValueError` for a verdict that is not one (the ledger's rule).
        """
        with self._ledger_lock:
            task = self.ledger.task(self.env, key)
            if task is None or task.manifest != self.name:
                raise UnknownTake(key)
            if keep_verdict or keep_note:
                history = self.ledger.verdict_history(self.env, key)
                latest = history[-1] if history else None
                if keep_verdict:
                    verdict = latest.verdict if latest is not None else None
                if keep_note:
                    note = latest.note if latest is not None else None
            recorded = self.ledger.record_verdict(self.env, key, verdict, note)
            self.verdicts_given += 1
            return recorded
