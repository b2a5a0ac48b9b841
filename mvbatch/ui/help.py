"""Words the CLI says before any stage runs: the help's epilogue and a run's mode line.

Owns: what every command's --help says after its options (exit codes,
environment, log file; `\b` keeps click from re-wrapping a paragraph), and
the first line of every run: live or simulated, and what chose it.
Must not: import any stage; `mvbatch --help` loads it at start-up.
"""

from __future__ import annotations

EPILOG = """\b
Exit codes: 0 everything asked for succeeded; 1 some tasks failed, were
cancelled or were not finished; 2 usage or manifest error (nothing
submitted); 3 refused by the budget (nothing over the cap submitted);
4 API, authentication or configuration error; 130 interrupted (resume by
running the same command again).

\b
Environment:
  MINDVIDEO_API_KEY   the API key; unset means the built-in simulator. Also
                      read from a .env file in the working directory (every
                      run says which source chose live or simulated mode).
  MINDVIDEO_BASE_URL  API base URL (default https://api.mindvideo.ai/api/v1)
  MVBATCH_STATE_DIR   the ledger and the logs (default ./state)
  MVBATCH_OUTPUT_DIR  videos and reports (default ./outputs)

\b
Log file: MVBATCH_STATE_DIR/logs/mvbatch.jsonl (JSON lines, every event from
info up); an unexpected error's traceback goes beside it as crash-*.log.
"""


def mode_line(
    *, simulated: bool, forced: bool, live_flag: bool, key_source: str | None, base_url: str
) -> tuple[str, str, dict[str, str]]:
    """The first line of every run: live or simulated, and what chose it.

    `forced`: --simulate; `live_flag`: --live; `key_source`: where the key came
    from (the environment or a .env path), never the key. Returns the text,
    its style and the fields of its JSON form.
    """
    if simulated:
        why = "--simulate" if forced else "no MINDVIDEO_API_KEY in the environment or in ./.env"
        text = f"simulated ({why}): the built-in simulator, nothing is charged" + (
            "" if forced else "; set MINDVIDEO_API_KEY for real videos"
        )
        return (
            text,
            "bold cyan",
            {"mode": "simulated", "source": "--simulate" if forced else "no key"},
        )
    source = key_source or "?"
    text = (
        f"live: MINDVIDEO_API_KEY from {source}{' (--live)' if live_flag else ''}, "
        f"API {base_url}: tasks are charged to your account"
    )
    return text, "bold magenta", {"mode": "live", "source": source, "base_url": base_url}
