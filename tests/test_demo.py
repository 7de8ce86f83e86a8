"""The demo's summary: this run's numbers, which add up, in 80 columns.

``python -m stager.demo`` runs twice on the same data dir, in a terminal 200
columns wide. Each summary must count its own run only (enqueued, committed,
superseded, dead-lettered), agree with what the producer generated and what
the manifest holds, add up per table, end its progress bar at the committed
count, and keep every line but the copy-paste commands within 80 columns.
"""

import os
import re
import subprocess
import sys

import duckdb
import pytest

from duckstage.config import load_config
from stager.produce import generate
from tests.helpers import REPO, write_config

# 40 stocks over 6 trading days from 2024-04-25: all seven task types, every kind of bad row.
DEMO = dict(stocks=40, days=6, seed=3, bad_share=0.02, start="20240425")
FIELDS = ("enqueued", "committed", "superseded", "deadlettered", "warehouse")
NUMBER = r"(\d[\d,]*)"


def run_demo(config_path):
    args = [sys.executable, "-m", "stager.demo", "--config", str(config_path)]
    for key, value in DEMO.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(args, cwd=str(REPO), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def manifest_rows(config):
    with duckdb.connect(str(config.loader.database), read_only=True) as con:
        return con.execute("SELECT coalesce(sum(rows), 0) FROM _duckstage_manifest").fetchone()[0]


def table_rows(stdout):
    """{table or "total": {field: number}} parsed from the summary table."""
    row = re.compile(rf"^\s*(\w+)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s*$")
    out = {}
    for line in stdout.splitlines():
        m = row.match(line)
        if m:
            out[m[1]] = dict(zip(FIELDS, (int(v.replace(",", "")) for v in m.groups()[1:])))
    return out


def progress_rows(stdout, label):
    m = re.search(rf"^{re.escape(label)}\s.*?{NUMBER} rows", stdout, re.M)
    return int(m[1].replace(",", ""))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two demo runs on one data dir: [(stdout, manifest rows committed by that run)], and the config."""
    path = write_config(tmp_path_factory.mktemp("demo"))
    config = load_config(path)
    first = run_demo(path)
    after_first = manifest_rows(config)
    second = run_demo(path)
    return [(first, after_first), (second, manifest_rows(config) - after_first)], config


def generated():
    enqueued, bad = {}, {}
    for batch in generate(**DEMO):
        name = batch.task_type.value
        enqueued[name] = enqueued.get(name, 0) + batch.rows
        bad[name] = bad.get(name, 0) + len(batch.bad_rows)
    return enqueued, bad


@pytest.mark.parametrize("which", [0, 1], ids=["first run", "second run on the same data"])
def test_the_summary_counts_this_run_and_adds_up(runs, which):
    (stdout, committed), config = runs[0][which], runs[1]
    rows = table_rows(stdout)
    total = rows.pop("total")
    enqueued, bad = generated()
    assert set(rows) == set(config.datasets.names), stdout

    for name, r in rows.items():
        assert r["enqueued"] == enqueued[name], (name, stdout)
        assert r["deadlettered"] == bad[name], (name, stdout)  # this run's, not every file on disk
        assert r["enqueued"] == r["committed"] + r["superseded"] + r["deadlettered"], (name, stdout)
    for field in FIELDS:
        assert total[field] == sum(r[field] for r in rows.values()), (field, stdout)
    assert total["committed"] == committed, stdout
    assert total["superseded"] > 0  # stock_basic is fetched twice into one file: the numbers show it

    assert progress_rows(stdout, "enqueued (producer)") == total["enqueued"]
    assert progress_rows(stdout, "committed (loader)") == total["committed"]
    assert f"dead-lettered rows: {total['deadlettered']:,} (injected bad: {sum(bad.values()):,})" in stdout


def test_a_second_run_changes_no_warehouse_row(runs):
    (first, _), (second, _) = runs[0]
    assert {n: r["warehouse"] for n, r in table_rows(first).items()} == \
        {n: r["warehouse"] for n, r in table_rows(second).items()}
    assert "before this run the warehouse held" in second


def test_the_summary_fits_80_columns_in_a_wide_terminal(runs):
    stdout = runs[0][0][0]
    summary = stdout.split("Look at it with the duckdb CLI:")[0]
    wide = [line for line in summary.splitlines() if len(line.rstrip()) > 80]
    assert not wide, "\n".join(wide)
    assert len(table_rows(stdout)) == len(runs[1].datasets.names) + 1  # no name or number cut short


def test_the_demo_needs_no_cli_module():
    # The demo is a library user like any application: it loads the
    # configuration itself, so the stager command can change without it.
    probe = "import sys, stager.demo; print(sorted(m for m in sys.modules if m.endswith('.cli')))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=str(REPO), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_bad_configuration_is_one_line_and_exit_2(tmp_path):
    path = write_config(tmp_path, stager={"batch_size": "many"})
    done = subprocess.run([sys.executable, "-m", "stager.demo", "--config", str(path)], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "stager.batch_size" in lines[0], done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made
