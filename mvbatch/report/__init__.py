"""The report stage: what a manifest's tasks became, as report.json/csv/md/html.

Read in this order: `model` (the report as data and report.json's document),
`build` (from the ledger's rows and the plan), `formats` (JSON, CSV and
Markdown text; atomic writes), `html` (the contact sheet), `command` (fetch
what is missing, write the files: `report_command`, `finish_run`), then
`export` (`mvbatch export`: the takes copied for an editor, verified, with
shots.csv) and `timeline` (its timeline.otio). Inside, arrows point the same
way: command → html → formats → model, build → model, export → timeline.

May import the stages before it (plan, ledger, api, run, downloads), never
`mvbatch.commands` or `mvbatch.cli`, which call into it.
"""
