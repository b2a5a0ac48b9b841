"""The terminal: the one owner of stdout and stderr while a command runs.

Owns: the two Rich consoles every command prints through, bound once per
command to the streams the process had when the command started; redaction
of what they write; their width when there is no terminal; and the JSON-lines
form of the messages a person would read on stderr (`--log-format json`).

Why bound once: Rich's `Live` (the progress panel) replaces `sys.stderr` with
a proxy that prints through the console. A console that looked `sys.stderr`
up at each write would then write into that proxy, which prints through the
console, which writes into the proxy ... forever, at full CPU, with Ctrl-C
stuck behind it. A stream captured before anything replaces it cannot loop.

Must not: decide what is said (the CLI and `progress` do), or read settings.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, TextIO

from mvbatch import logs

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

LogFormat = Literal["auto", "console", "json"]

# Without a terminal there is no width to fit, and cutting model names or
# price sources at 80 columns (Rich's default) loses what a CI log is for.
# Tables still take only their natural width.
PIPE_WIDTH = 240


class RedactingStream:
    """A text stream that removes known secrets from everything written to it.

    It holds the stream it was given and never looks `sys.stdout`/`sys.stderr`
    up again, so nothing that swaps those later can make it write to itself.
    """

    def __init__(self, target: TextIO) -> None:
        self.target = target

    def write(self, text: str) -> int:
        self.target.write(logs.redact_text(text))
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        isatty = getattr(self.target, "isatty", None)
        return bool(isatty and isatty())

    def fileno(self) -> int:
        return int(self.target.fileno())

    @property
    def encoding(self) -> str:
        return str(getattr(self.target, "encoding", None) or "utf-8")


def _console(stream: TextIO, columns: int | None) -> Console:
    from rich.console import Console  # here: `mvbatch --help` never draws with Rich

    wrapped = RedactingStream(stream)
    width = columns
    if width is None and not wrapped.isatty():
        width = PIPE_WIDTH
    return Console(file=wrapped, soft_wrap=True, width=width)  # type: ignore[arg-type]


class Terminal:
    """stdout and stderr of one command, as Rich consoles, plus its messages.

    `out` is for what the command produces (a plan, a summary); `say` is for
    what it tells the person running it (the simulator banner, a stop
    request, an error), on stderr: text on a console, one JSON object per
    line under `--log-format json`, so a machine reading stderr never has to
    parse prose.
    """

    def __init__(
        self,
        stdout: TextIO,
        stderr: TextIO,
        log_format: LogFormat = "auto",
        columns: int | None = None,
    ) -> None:
        """`columns`: a width the user asked for (COLUMNS); else the terminal's, or wide."""
        self.stdout = RedactingStream(stdout)
        self.stderr = RedactingStream(stderr)
        self.json = log_format == "json"
        self._columns = columns

    # The consoles are made when first used, on the streams given above.
    @cached_property
    def out(self) -> Console:
        return _console(self.stdout.target, self._columns)

    @cached_property
    def err(self) -> Console:
        return _console(self.stderr.target, self._columns)

    @property
    def interactive(self) -> bool:
        """A person is watching stderr: a live panel is worth drawing."""
        return self.err.is_terminal and not self.json

    def say(
        self,
        message: str | Text,
        *,
        event: str,
        level: str = "info",
        style: str = "",
        **fields: Any,
    ) -> None:
        if self.json:
            self.write_json(event, level=level, message=str(message), **fields)
            return
        from rich.text import Text

        text = message if isinstance(message, Text) else Text(message, style=style)
        self.err.print(text, highlight=False)

    def write_json(self, event: str, *, level: str = "info", **fields: Any) -> None:
        record: dict[str, Any] = {
            "event": event,
            "level": level,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            **fields,
        }
        self.stderr.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.stderr.flush()

    def print(self, renderable: RenderableType, **options: Any) -> None:
        """Print to stdout (the command's product)."""
        self.out.print(renderable, **options)

    def log_line(self, line: str) -> None:
        """Where `logs` writes rendered console lines: through the stderr console,
        so that a live panel stays below them instead of being torn."""
        if self.json:
            self.stderr.write(line + "\n")
            self.stderr.flush()
        else:
            from rich.text import Text

            self.err.print(Text.from_ansi(line), highlight=False, soft_wrap=True)
