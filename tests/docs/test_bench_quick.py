"""The benchmark suite at --quick size, so it cannot rot: every figure is produced and sane.

Figures are printed, never asserted against a speed: speed targets live in bench/, not in tests.
"""

import json
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.databases import (
    MYSQL_ADMIN_URL,
    throwaway_database,
    throwaway_postgres_database,
)

# A benchmark at quick size still takes about a minute: make test runs it, test-fast does not.
pytestmark = pytest.mark.slow

THROUGHPUT = {
    "throughput_per_order",
    "throughput_batched",
    "throughput_original_baseline",
    "throughput_set_based_sql",
    "per_order_vs_baseline",
    "batched_vs_baseline",
    "batched_vs_set_based_sql",
}
EXPECTED = {
    "shop_build_s",
    "detection_orphan_stats_ms",
    "detection_plain_sql_ms",
    "detection_first_page_ms",
    "detection_plain_first_page_ms",
    "detection_orphan_stats_24h_ms",
    "detection_orphan_stats_24h_with_aged_out_ms",
    "detection_inconsistency_report_ms",
    "detection_inconsistency_refresh_ms",
    "detection_plain_sql_24h_ms",
    *(
        f"{name}_no_index"
        for name in (
            "detection_orphan_stats_ms",
            "detection_plain_sql_ms",
            "detection_first_page_ms",
            "detection_plain_first_page_ms",
            "detection_orphan_stats_24h_ms",
            "detection_plain_sql_24h_ms",
            "detection_orphan_stats_24h_with_aged_out_ms",
            "detection_inconsistency_report_ms",
            "detection_inconsistency_refresh_ms",
        )
    ),
    *THROUGHPUT,
    "job_empty_backlog_wall_s",
    "job_empty_backlog_rss_mib",
    "job_backlog_wall_s",
    "job_backlog_orders_per_s",
    "job_backlog_rss_mib",
    "peak_rss_mib",
    "peak_rss_ratio",
    "scale_out_orders_per_s",
}


@pytest.mark.timeout(900)  # the subprocess's own limit below, not pytest's default
def test_quick_benchmark_prints_every_figure(tmp_path):
    out = tmp_path / "figures.jsonl"
    with (
        throwaway_postgres_database("regbench_quick") as bench_url,
        throwaway_database("regbench_quick", MYSQL_ADMIN_URL) as mariadb_url,
    ):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.run",
                "--quick",
                "--url",
                bench_url.render_as_string(hide_password=False),
                "--mariadb-url",
                mariadb_url.render_as_string(hide_password=False),
                "--out",
                str(out),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in out.read_text().splitlines()] == printed
    names = {f["name"] for f in printed}
    assert EXPECTED <= names, f"missing figures: {sorted(EXPECTED - names)}"
    for figure in printed:
        assert figure["value"] > 0 and figure["commit"], figure
        assert figure["database"] in ("postgresql", "mariadb"), figure
        assert "PostgreSQL" in figure["machine"] and "MariaDB" in figure["machine"], figure
    # Every throughput figure and ratio for both servers, from the one run.
    on_mariadb = {f["name"] for f in printed if f["database"] == "mariadb"}
    assert THROUGHPUT <= on_mariadb, f"missing on MariaDB: {sorted(THROUGHPUT - on_mariadb)}"
    assert "the benchmark took" in proc.stderr
    plans = [line for line in proc.stderr.splitlines() if line.startswith("# plan")]
    assert any("pipeline first page" in line for line in plans), proc.stderr[-2000:]
    scale = [f for f in printed if f["name"] == "scale_out_orders_per_s"]
    assert sorted(f["runs"] for f in scale) == [1, 2, 4]
    table = subprocess.run(
        [sys.executable, "-m", "bench.report", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert [line.split("`")[1] for line in table.splitlines() if line.startswith("| `")] == [
        f["name"] for f in printed
    ]
    print("\n" + table)
