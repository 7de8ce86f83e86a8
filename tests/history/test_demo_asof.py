"""The demo ends with an as-of query whose answer differs from the current table for a restated stock.

A small demo whose synthetic producer restates one income report with a
changed figure (40 stocks, seed 0, 6 trading days from 2024-04-25); the query
it prints is run as a person would copy it.
"""

import os
import subprocess
import sys

from tests.helpers import REPO, write_config

DEMO = ["--stocks", "40", "--days", "6", "--seed", "0", "--bad-share", "0", "--start", "20240425"]


def test_the_demo_shows_what_was_known_before_a_restatement(tmp_path):
    path = write_config(tmp_path)
    done = subprocess.run([sys.executable, "-m", "stager.demo", "--config", str(path), *DEMO], cwd=str(REPO),
                          capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    commands = [line.strip() for line in done.stdout.split("Look at it with the duckdb CLI:", 1)[1].splitlines()]
    [asof] = [c for c in commands if "income_asof(DATE" in c]
    assert "join income c" in asof and "a.n_income_attr_p <> c.n_income_attr_p" in asof, asof

    shown = subprocess.run(["bash", "-c", asof], cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    rows = shown.stdout.split("├", 1)[-1].splitlines()[1:-1] if "├" in shown.stdout else []
    assert rows, f"the as-of query printed no restated stock:\n{asof}\n{shown.stdout}"
