"""docs/results.md lists every column of the three Parquet tables with its type, and nothing
that the schemas in protocol/results.py do not hold."""
import re
from pathlib import Path

import pytest

from protocol.results import (
    IMAGES_SCHEMA,
    KEY_COLUMNS,
    SCHEMA_VERSION,
    SEGMENTATIONS_SCHEMA,
    SEGMENTATIONS_SCHEMA_VERSION,
    TRIALS_SCHEMA,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "results.md"
ROW = re.compile(r"^\| `(?P<name>[a-z0-9_]+)` \| (?P<type>[a-z0-9_]+) \| (?P<meaning>.+) \|$")


def documented(section: str) -> dict[str, str]:
    """{column: type} of the table rows under the `## section` heading (up to the next `## `)."""
    text = DOC.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    rows = [ROW.match(line) for line in text[start:end if end > 0 else None].splitlines()]
    found = {}
    for row in filter(None, rows):
        assert row["name"] not in found, f"{section}: {row['name']} listed twice"
        assert row["meaning"].strip(), f"{section}: {row['name']} has no meaning"
        found[row["name"]] = row["type"]
    return found


@pytest.mark.parametrize("section, schema, extra", [
    ("trials.parquet", TRIALS_SCHEMA, {}),
    # images.parquet's key columns are the ones documented with trials.parquet
    ("images.parquet", IMAGES_SCHEMA, {name: str(dtype) for name, dtype in KEY_COLUMNS.items()}),
    ("segmentations.parquet", SEGMENTATIONS_SCHEMA, {}),
])
def test_every_column_is_documented_with_its_type(section, schema, extra):
    doc = {**extra, **documented(section)}
    actual = {field.name: str(field.type) for field in schema}
    assert sorted(set(actual) - set(doc)) == [], f"{section}: columns missing from docs/results.md"
    assert sorted(set(doc) - set(actual)) == [], f"{section}: docs/results.md lists columns the schema lacks"
    wrong = {name: (doc[name], actual[name]) for name in actual if doc[name] != actual[name]}
    assert not wrong, f"{section}: documented type != schema type: {wrong}"


def test_the_documented_schema_versions_are_current():
    text = DOC.read_text()
    assert f"Schema version {SCHEMA_VERSION} (" in text
    assert f"schema version {SEGMENTATIONS_SCHEMA_VERSION} (" in text
