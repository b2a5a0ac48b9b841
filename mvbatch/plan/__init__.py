"""The plan: from a TOML manifest to every concrete task, its key and its price.

Reading order: manifest (the file, validated, located errors) -> matrix
(variants) -> catalog (model schemas and the rules in their prose) -> media
(local "@files") -> mp4 / mp4_probe (a reference video's length) -> pricing
(rates with their source) -> keys (the idempotency key) -> planner (the
`Plan` of frozen `PlannedTask`s) -> planfile (a reviewed plan on disk).

Must not: send anything but the header requests of reference videos, or know
of the ledger, the API client or a run.
"""
