"""What a person sees: the terminal, the plan's tables, the progress and summaries.

- terminal: the one owner of stdout and stderr for a command (Rich consoles
  bound once, redaction, JSON lines under --log-format json);
- render: how a plan looks, to a person and to `plan --json`;
- progress: the live panel and progress lines of a run, and the preflight,
  run and `status` summaries.

Must not: decide anything. It reads plans, snapshots, results and documents
and turns them into text; only the CLI prints what it builds.
"""
