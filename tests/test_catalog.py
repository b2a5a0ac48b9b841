"""The model catalog: the bundled schemas are valid JSON Schema (checked here, not at start-up)."""

from __future__ import annotations

import jsonschema
import pytest

from mvbatch.plan import catalog


@pytest.mark.parametrize("slug", sorted(catalog.models()))
def test_every_bundled_schema_is_valid_json_schema(slug: str) -> None:
    jsonschema.Draft202012Validator.check_schema(catalog.models()[slug].schema)
