"""A light start: what a process loads before it does anything, read from ``python -X importtime``
in a fresh interpreter (a module imported once stays in ``sys.modules``, so only a new process
shows what a command really loads)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT

# Loaded only by a command that uses them: a database (SQLAlchemy, Alembic), validation
# (pydantic), Dagster, the HTTP clients, the audit preview's tables (pandas, numpy).
HEAVY = ("sqlalchemy", "alembic", "pydantic", "dagster", "httpx", "pandas", "numpy", "yaml")
# Not needed to load the code location: each is imported where it is used.
DEFERRED = ("alembic", "httpx", "httpcore", "rich", "pygments", "pandas", "numpy")


def imported(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime *args``; its result and the top-level packages it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    modules = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return done, modules


@pytest.mark.parametrize(
    "argv", [["--bogus"], ["doctor", "--bogus"], ["prune", "--older-than-days"]]
)
def test_a_cli_usage_error_says_so_in_one_line_and_loads_nothing_heavy(argv):
    done, modules = imported("-m", "regularization_pipeline.cli", *argv)

    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("regularize-completed-orders"), errors
    assert "error:" in errors[0]
    assert sorted(modules & set(HEAVY)) == []


def test_the_help_loads_nothing_heavy_either():
    done, modules = imported("-m", "regularization_pipeline.cli", "--help")

    assert done.returncode == 0
    assert "regularize-completed-orders" in done.stdout
    assert sorted(modules & set(HEAVY)) == []


def test_loading_the_code_location_defers_what_only_some_steps_use():
    done, modules = imported("-c", "import regularization_pipeline.definitions")

    assert done.returncode == 0, done.stderr[-2000:]
    assert "dagster" in modules  # what it does load, to prove the reading works
    assert sorted(modules & set(DEFERRED)) == []
