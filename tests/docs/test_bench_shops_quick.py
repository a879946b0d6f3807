"""The many-shops benchmark at --quick size, so it cannot rot: every figure for 1, 2 and 4
concurrent runs, and the table. Figures are printed, never asserted against a speed."""

import json
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

from tests.support import ROOT
from tests.support.databases import PG_ADMIN_URL, unavailable

pytestmark = pytest.mark.slow

FIGURES = {"shops_orders_per_s", "shops_worst_lag_s", "shops_median_lag_s", "shops_start_share"}


@pytest.mark.timeout(600)
def test_quick_shops_benchmark_prints_every_figure_and_the_table():
    admin = sa.create_engine(PG_ADMIN_URL)
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        unavailable(f"postgresql is not reachable ({type(exc.orig).__name__})")
    finally:
        admin.dispose()
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=f"regbench_shops_{uuid.uuid4().hex[:8]}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.shops",
            "--quick",
            "--drop",
            "--url",
            url.render_as_string(hide_password=False),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {(f["name"], f["runs"]) for f in printed} == {
        (name, runs) for name in FIGURES for runs in (1, 2, 4)
    }
    for figure in printed:
        assert figure["value"] > 0 and figure["shops"] == 4 and figure["orphans"] == 50, figure
    rows = [
        line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["1", "2", "4"]
    assert "the benchmark took" in proc.stderr
    print("\n" + proc.stdout)
