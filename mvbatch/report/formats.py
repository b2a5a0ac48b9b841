"""How a `Report` is written as text: report.json, report.csv, report.md.

Owns: the text of each file, as a stream of chunks (`json_chunks`,
`csv_chunks`, `markdown_chunks`: what is held at once does not grow with the
tasks; `json_text` and the others join them), the Jinja environment and
filters the Markdown and the contact sheet share (`templates`: dollars,
seconds, sizes, tiers, Markdown-safe cells), and writing a file atomically
from its chunks (`write_atomic`).

report.json is the document of `Report.document()`, indented two spaces a
level, except that a short object or list is written on one line and each
task on a line of its own, each by the json module's C encoder: the same
document, parsed, at a fraction of the cost of `json.dumps(indent=2)`
(which only the pure-Python encoder does), and a task is one line to grep.

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
from collections.abc import Iterable, Iterator
from decimal import Decimal
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from mvbatch.downloads.naming import value_text
from mvbatch.ledger.charges import status_words
from mvbatch.money import duration, plain, usd
from mvbatch.report.model import Report, TaskEntry, task_document

# Tasks per chunk of a streamed file: large enough that a write is not per task,
# small enough that a chunk stays well under a megabyte.
CHUNK_TASKS = 200
# Characters gathered into one chunk from many small pieces.
CHUNK_CHARS = 1 << 16
# report.md lists at most this many tasks (report.csv and report.json list them all).
MARKDOWN_TASKS = 1000


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


CSV_HEADER = (
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
)


def csv_text(report: Report) -> str:
    return "".join(csv_chunks(report))


def csv_chunks(report: Report) -> Iterator[str]:
    """report.csv: the header, then `CHUNK_TASKS` rows at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    tasks = iter(report.tasks)
    while batch := list(islice(tasks, CHUNK_TASKS)):
        writer.writerows(_csv_row(t, report.simulated) for t in batch)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():  # no tasks: the header alone
        yield buffer.getvalue()


def _csv_row(t: TaskEntry, simulated: bool) -> list[Any]:
    charge = t.charge
    return [
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
        simulated,
        plain(t.cost_estimate_server),
        plain(t.cost_committed),
        "" if charge is None else charge.kind,
        status_words(t.status, charge),
        t.verdict or "",
        csv_cell(t.note),
    ]


def csv_cell(value: str | None) -> str:
    """A CSV cell that stays text: a spreadsheet runs one starting with = + - @ as a formula.

    A prompt, a note or a server message must not; the csv module quotes commas,
    quotes and line breaks.
    """
    text = "" if value is None else value
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def json_text(report: Report) -> str:
    return "".join(json_chunks(report))


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # no indent: the C encoder
# A list or object in the head of at most this many items, written on one line
# if that line is short; anything larger is written one item per line.
INLINE_ITEMS = 16
INLINE_CHARS = 160


def json_chunks(report: Report) -> Iterator[str]:
    """report.json (`Report.document()`), as it is produced: the head (totals and the
    rest) indented, a short object or list on one line, then one task per line.

    Some of the head's lists (the tasks off their estimate, the keys of a
    failure) are as long as the tasks: they are streamed too.
    """
    document = {**report.document_head(), "tasks": _Tasks(report)}
    yield from _gathered(_indented(document, "", inline=False))
    yield "\n"


class _Tasks:
    """Where report.json's tasks go in the head: written one per line, never held."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def chunks(self, pad: str) -> Iterator[str]:
        if not self.report.tasks:
            yield "[]"
            return
        separator = "[\n" + pad + "  "
        tasks = iter(self.report.tasks)
        while batch := list(islice(tasks, CHUNK_TASKS)):
            yield separator + (",\n" + pad + "  ").join(_ENCODE(task_document(t)) for t in batch)
            separator = ",\n" + pad + "  "
        yield "\n" + pad + "]"


def _indented(value: Any, pad: str, *, inline: bool = True) -> Iterator[str]:
    """`value` as indented JSON (two spaces a level), in pieces, without one string of it."""
    if isinstance(value, _Tasks):
        yield from value.chunks(pad)
        return
    if isinstance(value, (dict, list)) and value:
        if inline and len(value) <= INLINE_ITEMS:
            line = _ENCODE(value)
            if len(line) <= INLINE_CHARS:
                yield line
                return
        inner = pad + "  "
        if isinstance(value, dict):
            opening, closing = "{", "}"
            items: Iterable[tuple[str | None, Any]] = value.items()
        else:
            opening, closing = "[", "]"
            items = ((None, item) for item in value)
        for n, (name, item) in enumerate(items):
            yield (opening if n == 0 else ",") + "\n" + inner
            if name is not None:
                yield _ENCODE(name) + ": "
            yield from _indented(item, inner)
        yield "\n" + pad + closing
        return
    yield _ENCODE(value)


def _gathered(pieces: Iterable[str]) -> Iterator[str]:
    """Many small pieces as chunks of about `CHUNK_CHARS` characters."""
    buffer: list[str] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size >= CHUNK_CHARS:
            yield "".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer)


def markdown_text(report: Report) -> str:
    return "".join(markdown_chunks(report))


def markdown_chunks(report: Report) -> Iterator[str]:
    """report.md, as Jinja generates it; the task table lists the first `MARKDOWN_TASKS`."""
    return templates().get_template("report.md.j2").generate(r=report, shown=MARKDOWN_TASKS)


def write_atomic(path: Path, text: str | Iterable[str]) -> None:
    """Temp file in the same folder, fsync, rename: a reader sees the old or the new file.

    `text` is the whole text or its chunks, written as they come.
    """
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
            for chunk in [text] if isinstance(text, str) else text:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)  # noqa: PTH101 - mkstemp makes it 0600
        Path(handle.name).replace(path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
