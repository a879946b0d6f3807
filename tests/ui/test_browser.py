"""The Dagster UI in a real browser: dagster-webserver on loopback, headless Debian chromium through Playwright.

A temporary instance holds three completed runs of the job (run in-process
against a SQLite shop seeded with more orphans each time, so the metadata
plots have points). The test opens the asset lineage and the
``regularization_audit`` asset page and asserts what an operator needs to see:
the four lineage nodes, the check results and a metadata plot. Screenshots go
to a temporary folder (kept under $UI_SCREENSHOTS_DIR when set, which is how
docs/img/ is refreshed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from regularization_pipeline.core.db import create_app_engine
from regularization_pipeline.defs import jobs
from tests.support import ROOT
from tests.support.dagster import ALL_ASSETS, ALL_CHECKS, resources
from tests.support.databases import migrated_shop, unavailable
from tests.support.processes import BIN, free_port, wait_for_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LINEAGE = ["app_orders", "regularized_orders", "order_completed_events", "regularization_audit"]
RUNS = 3
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    """(base URL, screenshot folder) of a webserver over an instance with RUNS completed runs of the job."""
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (Debian package `chromium`)")
    tmp = tmp_path_factory.mktemp("ui")
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    url = f"sqlite:///{tmp / 'shop.db'}"
    engine = create_app_engine(url)
    shop = migrated_shop(engine)
    defs = dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=[jobs.regularize_completed_orders],
        resources=resources(url),
    )
    job = defs.resolve_job_def(jobs.JOB_NAME)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for n in range(RUNS):
            shop.orphans(2 * n + 1)
            double = shop.orphan()
            shop.payment(
                double
            )  # a double charge: transactions_consistent fails, as an operator would see it
            result = job.execute_in_process(
                instance=instance,
                run_config={"ops": {"regularized_orders": {"config": {"sleep": 0}}}},
            )
            assert result.success
    engine.dispose()

    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "REGULARIZATION_DATABASE_URL": url}
    log = open(tmp / "webserver.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            str(BIN / "dagster-webserver"),
            "-w",
            str(ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/server_info", [proc])
        shots = Path(os.environ.get("UI_SCREENSHOTS_DIR") or tmp / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        yield f"http://127.0.0.1:{port}", shots
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(webserver):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def _dismiss_welcome(page) -> None:
    """A fresh instance greets the first visit with a newsletter dialog; skip it once."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=10_000)
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError: no dialog this time
        return
    skip.click()


def test_the_asset_graph_shows_the_lineage(webserver, page):
    base, shots = webserver
    page.goto(f"{base}/asset-groups/order_regularization")
    _dismiss_welcome(page)
    for name in LINEAGE:
        page.get_by_text(name, exact=True).first.wait_for(state="visible")
    page.get_by_text("Loading...").first.wait_for(
        state="hidden"
    )  # each node's latest materialization
    page.wait_for_timeout(1500)  # the graph's layout animation
    for name in LINEAGE:
        # The graph's node as well as the sidebar's entry: the lineage is drawn, not only listed.
        assert page.get_by_text(name, exact=True).count() >= 2, name
    page.screenshot(path=str(shots / "asset-lineage.png"))


def test_the_checks_show_their_results(webserver, page):
    base, shots = webserver
    page.goto(f"{base}/assets/app_orders?view=checks")
    _dismiss_welcome(page)
    checks = page.locator("main, body").first
    checks.get_by_text("no_orphaned_pending_orders").first.wait_for(state="visible")
    checks.get_by_text("transactions_consistent").first.wait_for(state="visible")
    # Both failed: orphans were waiting before each run, and every run had a new double charge.
    assert checks.get_by_text("Failed", exact=True).count() >= 2
    page.get_by_text("orphaned_orders", exact=True).first.wait_for(state="visible")
    page.wait_for_timeout(1000)
    page.screenshot(path=str(shots / "app-orders-checks.png"))


def test_the_audit_asset_page_plots_its_metadata(webserver, page):
    base, shots = webserver
    page.goto(f"{base}/assets/regularization_audit")
    _dismiss_welcome(page)
    page.get_by_text("audit_rows", exact=True).first.wait_for(state="visible")
    page.get_by_role("button", name="Plots").click()
    charts = page.locator("canvas, svg.recharts-surface")
    charts.first.wait_for(state="visible")
    assert charts.count() >= 3
    for key in ("orphans_remaining", "error_rate", "run_duration_seconds"):
        # The description names these keys too: the last match is the plot's title.
        page.get_by_text(key, exact=True).last.wait_for(state="visible")
        assert page.get_by_text(key, exact=True).count() >= 2, key
    page.get_by_text("orphans_remaining", exact=True).last.scroll_into_view_if_needed()
    page.wait_for_timeout(1500)
    page.screenshot(path=str(shots / "audit-plots.png"))
