"""The documentation's commands run: documentation that is tested, as sqlite-utils tests its docs.

A small ``python -m stager.demo`` runs once, in a folder laid out like a clone
after ``make demo`` (``config/duckstage.yaml``, ``data/``, ``.venv`` -> this
virtualenv). Then every command of every ```sh block of README.md and of
docs/*.md, and every statement of a ```sql block, runs from a fresh copy of
that folder, and must exit 0 and print rows. A command that cannot run here is
listed in NOT_RUN with the reason; a documented command that is neither run
nor listed fails, so an example cannot be added without being run.

The repository stands alone: every document it names (``*.md``, ``docs/...``)
exists in it, and so does every file of it the README and ``docs/`` name.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import CONFIG_DIR, REPO

README = REPO / "README.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]  # whose sh and sql blocks run

# Commands (as written, comments dropped) that a test cannot run, and why.
NOT_RUN = {
    "make demo": "installs and runs the full-size demo for minutes; the fixture runs the same "
                 "`python -m stager.demo` on a small universe",
    "make test": "runs the test suite this test belongs to",
    "loader run": "runs until stopped; tests/loader/test_process.py runs it as a real subprocess",
}

# 40 stocks over 6 trading days from 2024-04-25: all seven task types carry
# rows and every kind of bad row is injected, so each example finds something.
DEMO_ARGS = ["--stocks", "40", "--days", "6", "--seed", "3", "--bad-share", "0.02", "--start", "20240425"]


def fenced_blocks(text, languages):
    """(language, body) of every fenced block whose info string is one of ``languages``."""
    pattern = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
    return [(m[1], m[2]) for m in pattern.finditer(text) if m[1] in languages]


def readme_commands(text=None):
    """Every command of the sh blocks and every statement of the sql blocks of ``text`` (else DOCUMENTS), in order."""
    if text is None:
        return [c for path in DOCUMENTS for c in readme_commands(path.read_text(encoding="utf-8"))]
    commands = []
    for language, body in fenced_blocks(text, ("sh", "sql")):
        if language == "sql":
            commands += [("sql", s.strip() + ";") for s in body.split(";") if s.strip()]
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(("sh", line.strip()))
    return commands


def bare(command):
    """The command without its trailing comment, for NOT_RUN."""
    return " ".join(shlex.split(command, comments=True))


def printed_rows(output):
    """Whether a command printed rows: a duckdb box has a row separator only when it has rows."""
    if "┌" in output:
        return "├" in output
    return bool(output.strip())


# -- a clone after `make demo` ---------------------------------------------------

def make_clone(folder):
    """A folder laid out like a clone: the shipped config files with data in ./data, and .venv."""
    (folder / "config").mkdir(parents=True)
    shutil.copy(CONFIG_DIR / "datasets.yaml", folder / "config" / "datasets.yaml")
    use_data_dir(folder)
    os.symlink(sys.prefix, folder / ".venv")
    return folder


def use_data_dir(folder):
    """Point the clone's config at its own data/ (absolute, so a copied clone uses its copy)."""
    body = yaml.safe_load((CONFIG_DIR / "duckstage.yaml").read_text(encoding="utf-8")) or {}
    body["data_dir"] = str(folder / "data")
    (folder / "config" / "duckstage.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")


def clone_env(folder):
    env = {k: v for k, v in os.environ.items() if k != "DUCKSTAGE_CONFIG"}
    env["PATH"] = f"{folder / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A clone where a small demo has finished; (folder, the demo's stdout)."""
    folder = make_clone(tmp_path_factory.mktemp("readme") / "clone")
    done = subprocess.run([str(folder / ".venv" / "bin" / "python"), "-m", "stager.demo", *DEMO_ARGS],
                          cwd=folder, env=clone_env(folder), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder, done.stdout


@pytest.fixture
def clone(demo, tmp_path):
    """A fresh copy of the finished demo's clone: commands that change data do not affect others."""
    folder = tmp_path / "clone"
    shutil.copytree(demo[0], folder, symlinks=True)
    use_data_dir(folder)
    return folder


# The documented command that makes config/lake.yaml (a DuckLake on SQLite, filled from the
# archive, docs/scaling.md): a command that uses that file runs after it, in the same clone.
LAKE_FILE = "config/lake.yaml"
LAKE_SETUP = next((c for _, c in readme_commands() if c.startswith("sed ") and f"> {LAKE_FILE}" in c), None)


def run(kind, command, folder):
    if LAKE_FILE in command and command != LAKE_SETUP:
        done = run("sh", LAKE_SETUP, folder)
        if done.returncode:
            return done
    if kind == "sql":
        args = [str(folder / ".venv" / "bin" / "duckdb"), "-readonly", "data/warehouse.duckdb", "-c", command]
    else:
        args = ["bash", "-c", command]
    return subprocess.run(args, cwd=folder, env=clone_env(folder), capture_output=True, text=True, timeout=60)


def assert_runs(kind, command, folder):
    done = run(kind, command, folder)
    said = f"{command}\nexit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, said
    assert "Traceback" not in done.stderr, said
    assert printed_rows(done.stdout), f"printed no rows: {said}"


# -- the tests --------------------------------------------------------------------

COMMANDS = list(dict.fromkeys(readme_commands()))  # a command shown in two documents runs once


@pytest.mark.parametrize("kind, command", [c for c in COMMANDS if bare(c[1]) not in NOT_RUN],
                         ids=lambda v: v if v in ("sh", "sql") else v[:60])
def test_readme_command_runs_and_prints_rows(kind, command, clone):
    assert_runs(kind, command, clone)


def test_the_readme_has_commands_and_every_exception_is_still_in_it():
    assert len(COMMANDS) >= 10
    assert LAKE_SETUP, f"no documented command writes {LAKE_FILE}, which other examples use"
    assert set(NOT_RUN) <= {bare(c) for _, c in COMMANDS}, "a NOT_RUN command left the documentation: drop it"


def test_the_demo_prints_commands_that_run(demo, clone):
    _, stdout = demo
    shown = stdout.split("Look at it with the duckdb CLI:", 1)[1].splitlines()
    commands = [line.strip() for line in shown if line.strip()]
    assert len(commands) >= 3
    for command in commands:
        assert command.startswith(".venv/bin/duckdb "), command
        assert_runs("sh", command, clone)


def test_readme_commands_are_found_in_every_block_kind():
    text = "x\n```sh\nloader status   # a comment\n# only a comment\nstager \\\n  status\n```\n" \
           "```sql\nselect 1;\nselect 2\n```\n```python\nprint()\n```\n"
    assert readme_commands(text) == [("sh", "loader status   # a comment"), ("sh", "stager    status"),
                                     ("sql", "select 1;"), ("sql", "select 2;")]
    assert bare("loader status   # a comment") == "loader status"


def test_printed_rows_tells_an_empty_duckdb_result():
    empty = "┌─────────┐\n│ ts_code │\n│ varchar │\n└─────────┘\n  0 rows\n"
    full = "┌─────────┐\n│ ts_code │\n│ varchar │\n├─────────┤\n│ 1       │\n└─────────┘\n"
    assert not printed_rows(empty) and printed_rows(full) and not printed_rows(" \n")


# -- the documents the repository names exist in it ----------------------------------

SCANNED = ("README.md", "Makefile", "pyproject.toml", "docs", "stager", "loader", "config", "examples",
           "benchmarks", "tests", ".ci")
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".json", ".toml", ".service", ".cfg", ".txt", ""}
DOC_REF = re.compile(r"(?<![\w/.-])((?:\.\./|\./)?(?:[\w.-]+/)*[\w.-]+\.md)\b")
DOCS_REF = re.compile(r"(?<![\w/.-])(docs/[\w./-]*[\w])")
REPO_FILE = re.compile(r"(?<![\w/.-])((?:stager|loader|tests|config|examples|benchmarks)/[\w/.-]*"
                       r"\.(?:py|yaml|yml|json|service))")


def repository_texts():
    for entry in SCANNED:
        path = REPO / entry
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) \
            if path.exists() else []
        for f in files:
            if "__pycache__" in f.parts or f.suffix not in TEXT_SUFFIXES or f == Path(__file__):
                continue  # this file names missing documents on purpose, in its own test
            yield f, f.read_text(encoding="utf-8", errors="replace")


def named_documents(text):
    text = re.sub(r"https?://\S+", "", text)  # web pages are not the repository's documents
    return set(DOC_REF.findall(text)) | set(DOCS_REF.findall(text))


def test_every_document_the_repository_names_exists_in_it():
    missing = []
    for path, text in repository_texts():
        for name in named_documents(text):
            if not ((path.parent / name).exists() or (REPO / name).exists()):
                missing.append(f"{path.relative_to(REPO)} names {name}")
    assert not missing, "documents named but not in the repository:\n" + "\n".join(sorted(missing))


def test_named_documents_finds_paths_and_links():
    text = "see [design](docs/design.md), `NOTES.md`, shared/notes.md and docs/intake and https://x.org/a.md"
    assert named_documents(text) == {"docs/design.md", "NOTES.md", "shared/notes.md", "docs/intake"}


def test_every_repository_file_the_documentation_names_exists():
    missing = [f"{path.relative_to(REPO)} names {name}"
               for path in DOCUMENTS
               for name in set(REPO_FILE.findall(path.read_text(encoding="utf-8")))
               if not (REPO / name).exists() and name != LAKE_FILE]  # that one a documented command writes
    assert not missing, "\n".join(sorted(missing))


def test_the_readme_is_a_first_page_and_links_its_reference():
    # Reference material lives in docs/; the README stays short enough to read first.
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= 12 * 1024, "README.md grew past 12 KB: move reference material to docs/"
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)[#)]", text))
    assert {f"docs/{p.name}" for p in REPO.joinpath("docs").glob("*.md")} <= linked, "a docs/ page the README omits"
