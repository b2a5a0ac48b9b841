"""Logging set-up: named events with flat fields, and no secret ever written.

Owns: structlog configuration (human console on a terminal, JSON lines
otherwise, or as `--log-format` says), an optional JSON log file under the
state folder, and redaction. Every secret the process knows (the API key) is
registered here once (`register_secret`); `redact_text` replaces it, and the
forms a server may echo it in (URL-encoded, JSON-escaped), wherever it appears.
The log processor applies it to every field and blanks fields whose names say
they hold secrets; `mvbatch.api.responses` applies it to every string a server
sends before anything stores it.

Loggers come from `get`, at module level; structlog itself is imported (and
configured as `configure` last said) when one of them first logs.
"""

from __future__ import annotations

import atexit
import functools
import json
import re
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TextIO
from urllib.parse import quote, quote_plus

LogFormat = Literal["auto", "console", "json"]
REDACTED = "[redacted]"
_SECRET_FIELDS = frozenset(
    {"authorization", "api_key", "apikey", "token", "secret", "password", "bearer"}
)
# A secret this long or longer is replaced wherever it appears, even inside a
# word; a shorter one only where it stands alone (see `register_secret`).
MIN_SECRET = 6
_secrets: set[str] = set()  # each registered secret, in every form it may be echoed in
_open_files: list[TextIO] = []
# structlog is imported when the first event is logged, not at start-up: its
# package loads its console renderer and, through it, Rich's traceback and
# pretty-printing machinery (a third of `mvbatch --help`'s start-up), which a
# command that logs nothing never uses. Until then `configure` leaves its
# configuration here, and `_structlog` applies it.
_pending: Callable[[], None] | None = None


def register_secret(value: str | None) -> None:
    """Never write `value`: `redact_text` replaces it from now on, in this process.

    Also its URL-encoded and JSON-escaped forms, which is how a server echoes
    a key in a query string or a body. A value shorter than `MIN_SECRET`
    characters is not skipped (it would leak), but replaced only where it is a
    token of its own (not inside a longer word or number), so that a short
    key does not blank every word that happens to contain it.
    """
    if not value:
        return
    _secrets.update({value, quote(value, safe=""), quote(value), quote_plus(value)})
    _secrets.update({json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]})


@functools.lru_cache(maxsize=8)
def _matchers(secrets: frozenset[str]) -> tuple[tuple[str, ...], re.Pattern[str] | None]:
    """The long secrets, longest first (a form containing another goes whole), and a
    pattern of the short ones as whole tokens."""
    long = tuple(sorted((s for s in secrets if len(s) >= MIN_SECRET), key=len, reverse=True))
    short = sorted((s for s in secrets if len(s) < MIN_SECRET), key=len, reverse=True)
    if not short:
        return long, None
    alternatives = "|".join(map(re.escape, short))
    return long, re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")


# Shapes of credentials that must never be written even when this process was
# not told the key (a server echoing a header back, a report written later).
_CREDENTIAL_SHAPES = re.compile(
    r"(?i)(?<=bearer )[A-Za-z0-9._~+/=-]{6,}|\bmv_(?:live|test)_[A-Za-z0-9_-]+"
)
# What every match of `_CREDENTIAL_SHAPES` contains. Searching for these two is
# several times faster than the look-behind pattern, which tries every offset,
# and nearly all text has neither, so the pattern itself rarely runs.
_BEARER_HINT = re.compile(r"(?i)bearer ")
_KEY_HINT = re.compile(r"(?i)mv_(?:live|test)_")


def redact_text(text: str) -> str:
    """`text` with every registered secret, and anything shaped like a credential, replaced.

    Meant for what may carry a secret: a server's words, an exception, a log
    line, what a command prints. Files we compose from such values (the
    reports) are redacted where the values enter, not byte by byte.
    """
    long, short = _matchers(frozenset(_secrets))
    for secret in long:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if short is not None:
        text = short.sub(REDACTED, text)
    if _BEARER_HINT.search(text) or _KEY_HINT.search(text):
        text = _CREDENTIAL_SHAPES.sub(REDACTED, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: REDACTED if str(k).lower() in _SECRET_FIELDS else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(repr(value))
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event):
        if name.lower() in _SECRET_FIELDS:
            event[name] = REDACTED
        else:
            event[name] = _redact_value(event[name])
    return event


class _Console:
    """Writes rendered lines to a sink (the CLI's terminal), a given stream,
    or, for library use without either, to whatever `sys.stderr` is now."""

    def __init__(self, stream: TextIO | None, sink: Callable[[str], None] | None) -> None:
        self.stream = stream
        self.sink = sink

    def msg(self, message: str) -> None:
        if self.sink is not None:
            self.sink(message)
        else:
            print(message, file=self.stream or sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = msg


def configure(
    log_format: LogFormat = "auto",
    level: str = "warning",
    log_file: Path | None = None,
    stream: TextIO | None = None,
    *,
    sink: Callable[[str], None] | None = None,
    tty: bool | None = None,
) -> None:
    """Console output goes to stderr at `level`; the log file, if any, gets JSON at info.

    `sink` (with `tty`, whether it ends on a terminal) takes each rendered
    console line instead of a stream: the CLI passes its terminal, the one
    owner of stderr.
    """
    if tty is None:
        tty = (stream or sys.stderr).isatty()
    use_json = log_format == "json" or (log_format == "auto" and not tty)
    shutdown()
    handle = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handle = log_file.open("a", encoding="utf-8")
        _open_files.append(handle)

    def apply() -> None:
        _configure_structlog(
            level, handle, _Console(stream, sink), use_json=use_json, colors=bool(tty)
        )

    global _pending  # noqa: PLW0603 - one configuration per process, like structlog's own
    if "structlog" in sys.modules:  # loggers may be in use: they follow it from now on
        _pending = None
        apply()
    else:
        _pending = apply


def _configure_structlog(
    level: str, handle: TextIO | None, console: _Console, *, use_json: bool, colors: bool
) -> None:
    import logging

    import structlog

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks become plain text (no local variables, which could hold
        # request headers) before redaction sees them.
        structlog.processors.format_exc_info,
        redact,
    ]
    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.WARNING)

    def route(_logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        # The file keeps everything from info up as JSON; the console only
        # what passes its own level, rendered for a person or a machine.
        json_line = redact_text(
            str(structlog.processors.JSONRenderer()(_logger, method, dict(event)))
        )
        loud = logging.getLevelNamesMapping().get(method.upper(), logging.INFO) >= threshold
        if handle is not None:
            print(json_line, file=handle, flush=True)
        if not loud:
            raise structlog.DropEvent
        if use_json:
            return json_line
        rendered = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )(_logger, method, event)
        return redact_text(str(rendered))

    structlog.configure(
        processors=[*shared, route],
        logger_factory=lambda *_: console,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=False,
    )


def _structlog() -> ModuleType:
    """structlog, imported, with the configuration `configure` last asked for applied."""
    global _pending
    import structlog

    if _pending is not None:
        apply, _pending = _pending, None
        apply()
    return structlog


def shutdown() -> None:
    """Close the log file, if one is open (configure() does it before reopening)."""
    while _open_files:
        _open_files.pop().close()


atexit.register(shutdown)


class _Logger:
    """structlog's logger `name`, from its first use on (see `_pending`)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attribute: str) -> Any:
        if self._logger is None:
            self._logger = _structlog().get_logger(self._name)
        return getattr(self._logger, attribute)


def get(name: str = "mvbatch") -> Any:
    """A logger for module-level use: importing it costs nothing until it logs."""
    return _Logger(name)
