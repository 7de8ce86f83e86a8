"""docs/configuration.md's table of keys is the declaration in duckstage/config.py, column by column."""

import re

from duckstage.config import SPEC, declared_keys, reference_table
from tests.helpers import REPO

DOC = REPO / "docs/configuration.md"


def table_rows(text):
    """``{key: (default, live, meaning)}`` of the Markdown table that starts with ``| key | default``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*key\s*\|\s*default\s*\|", line))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        key, default, live, meaning = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        rows[key.strip("`")] = (default, live, meaning)
    return rows


def test_the_documented_table_equals_the_declaration():
    documented = table_rows(DOC.read_text(encoding="utf-8"))
    declared = table_rows(reference_table())
    missing = sorted(set(declared) - set(documented))
    unknown = sorted(set(documented) - set(declared))
    assert not missing and not unknown, f"in the declaration only: {missing}; in the document only: {unknown}"
    differ = {k: (documented[k], declared[k]) for k in declared if documented[k] != declared[k]}
    assert not differ, ("docs/configuration.md disagrees with duckstage/config.py (document, declaration): "
                        f"{differ}\nthe table to paste:\n{reference_table()}")


def test_the_generated_table_says_every_key_its_default_and_whether_it_is_live():
    rows = table_rows(reference_table())
    assert list(rows) == [name for name, _ in declared_keys()]
    assert rows["stager.batch_size"] == ("`1000`", "yes", "rows that rotate a staging file")
    assert rows["huey.fsync"][:2] == ("`true`", "no")
    assert rows["loader.shutdown_timeout"][1] == "no"
    assert all(meaning for _, _, meaning in rows.values()), "a key declared without its meaning"
    assert len(rows) == sum(len(v) if isinstance(v, dict) else 1 for v in SPEC.values())


def test_table_rows_reads_a_changed_cell():
    text = reference_table().replace("| `stager.batch_size` | `1000` |", "| `stager.batch_size` | `500` |")
    assert table_rows(text)["stager.batch_size"][0] == "`500`"
