"""How a `Report` is written as text: report.json, report.csv, report.md.

Owns: the text of each file (`json_text`, `csv_text`, `markdown_text`), the
Jinja environment and filters the Markdown and the contact sheet share
(`templates`: dollars, seconds, sizes, tiers, Markdown-safe cells), and
writing a file atomically (`write_atomic`).

Must not: decide what a report says (`model.py` adds it up), read the ledger,
or let a prompt or a server message become markup or a spreadsheet formula:
Jinja autoescape is on for every template, Markdown cells are escaped
(`md_cell`) and CSV cells that would run as formulas are quoted (`csv_cell`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from mvbatch.downloads.naming import value_text
from mvbatch.money import duration, plain, usd
from mvbatch.report.model import Report


@cache
def templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("mvbatch.report", "templates"),
        # On for every template, Markdown included: a prompt is data, and
        # escaped HTML is harmless in a Markdown viewer while raw HTML is not.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(
        usd=usd,
        md=md_cell,
        tier=tier_label,
        seconds=duration,
        size=size_text,
        percent=percent_text,
    )
    return environment


def percent_text(value: Decimal | None) -> str:
    if value is None:
        return "—"
    return f"{'+' if value > 0 else ''}{value}%"


def size_text(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def md_cell(value: Any) -> Markup:
    """Text safe in Markdown, table cells included: one line, markup characters escaped.

    `<`, `>` and `&` become entities (a Markdown viewer passes raw HTML
    through, so a prompt must not carry any); quotes stay readable, as they
    are harmless outside HTML tags. The result is marked safe so that
    autoescape does not escape it twice.
    """
    text = "" if value is None else str(value)
    text = " ".join(text.split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for special in ("\\", "|", "`", "*", "_", "[", "]"):
        text = text.replace(special, "\\" + special)
    return Markup(text)  # noqa: S704 - escaped just above


def tier_label(price_class: str) -> str:
    """`kling-v2-6 {"audio":false,"mode":"std"}` as `kling-v2-6 · audio=false · mode=std`."""
    model, _, tier = price_class.partition(" ")
    try:
        fields = json.loads(tier) if tier else {}
    except ValueError:
        return price_class
    if not isinstance(fields, dict):
        return price_class
    return " · ".join([model, *(f"{k}={value_text(v)}" for k, v in fields.items())])


def csv_text(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "shot",
            "variant",
            "take",
            "key",
            "task_id",
            "model",
            "status",
            "cost_estimate",
            "cost_actual",
            "estimate_local",
            "price_source",
            "seconds",
            "video_seconds",
            "error",
            "path",
            "sha256",
            "bytes",
            "url",
            "simulated",
            "cost_estimate_server",
            "cost_committed",
            "charge",
            "status_text",
            "verdict",
            "note",
        ]
    )
    for t in report.tasks:
        writer.writerow(
            [
                csv_cell(t.shot),
                csv_cell(t.variant_label),
                t.take,
                t.key,
                csv_cell(t.task_id),
                t.model,
                t.status,
                plain(t.cost_estimate),
                plain(t.cost_actual),
                plain(t.estimate_local),
                t.price_source,
                "" if t.elapsed is None else t.elapsed,
                "" if t.video_seconds is None else str(t.video_seconds),
                csv_cell(t.error),
                csv_cell(" ".join(o.path or "" for o in t.outputs).strip()),
                " ".join(o.sha256 or "" for o in t.outputs).strip(),
                " ".join(str(o.bytes or "") for o in t.outputs).strip(),
                csv_cell(" ".join(o.url for o in t.outputs)),
                report.simulated,
                plain(t.cost_estimate_server),
                plain(t.cost_committed),
                "" if t.charge is None else t.charge.kind,
                t.status_text,
                t.verdict or "",
                csv_cell(t.note),
            ]
        )
    return buffer.getvalue()


def csv_cell(value: str | None) -> str:
    """A CSV cell that stays text: a spreadsheet runs one starting with = + - @ as a formula.

    A prompt, a note or a server message must not; the csv module quotes commas,
    quotes and line breaks.
    """
    text = "" if value is None else value
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def json_text(report: Report) -> str:
    return json.dumps(report.document(), ensure_ascii=False, indent=2) + "\n"


def markdown_text(report: Report) -> str:
    return templates().get_template("report.md.j2").render(r=report)


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the same folder, fsync, rename: a reader sees the old or the new file."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed before the rename
        "w",
        encoding="utf-8",
        dir=path.parent,
        prefix=f".{path.name}.",
        suffix=".tmp",
        delete=False,
        newline="",
    )
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)  # noqa: PTH101 - mkstemp makes it 0600
        Path(handle.name).replace(path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
