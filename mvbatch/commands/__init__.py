"""What each command does, wired to the settings: the stages put to work.

- `planning`: a plan as `plan` shows it (the price book with the rates this
  ledger learned, the reference-video probe) and its tasks' ledger states;
- `selection`: which of the plan's tasks a run runs (`run --draft`,
  `--approved-only`, `--reroll-rejected`), and the re-rolled takes;
- `running`: `run`, prepared without a request (endpoint, plan, ledger,
  budget check) so the CLI can show it, refuse or ask, then executed with the
  downloader and the reports; Ctrl-C handling (`Stopper`);
- `status`: the `status` document from the ledger and the plan;
- `reporting`: which plan and ledger side `report` writes of;
- `folders`: the state and output folders, checked before anything is sent
  or written (a file in the way, a read-only mount: exit 4, one line).

This layer sits below the CLI and above every stage it uses (plan, ledger,
api, run, downloads, report). It keeps `cli.py` thin, and never prints.
"""
