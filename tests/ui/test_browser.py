"""The Dagster UI in a real browser, after a demo run: `make dev` on loopback, headless Debian chromium.

The module's server is the one a newcomer gets: `python -m regularization_pipeline.demo`
(`make demo`) in a scratch folder, then `make dev` over its shop and instance (webserver,
scheduler and sensors). The tests open the asset lineage, the checks of ``app_orders``,
the ``regularization_audit`` page, the schedule and the sensor, and assert what an operator
needs to see; the last one launches a run through the GraphQL client exactly as
docs/launching.md shows. Screenshots go to a temporary folder (kept under
$UI_SCREENSHOTS_DIR when set, which is how docs/img/ is refreshed).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs import jobs
from regularization_pipeline.demo.shop import ShopWriter
from tests.support import ROOT
from tests.support.databases import unavailable
from tests.support.processes import free_port, run_demo, wait_for_http

pytestmark = pytest.mark.slow

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
# regularization_audit's plotted figures, in the UI's (alphabetical) order.
AUDIT_PLOTS = [
    "error_rate",
    "held",
    "oldest_orphan_age_minutes",
    "orphans_remaining",
    "regularized",
    "run_duration_seconds",
]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    """(base URL, screenshot folder, shop URL) of `make dev` over a fresh `make demo`."""
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (Debian package `chromium`)")
    tmp = tmp_path_factory.mktemp("ui")
    # The schedule stays on but fires half a day away: a tick landing mid-test would show
    # the checks as planned (running) instead of the state the demo run left.
    far = dt.datetime.now(dt.UTC) + dt.timedelta(hours=12)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp / "dagster_home"),
        "REGULARIZATION_DATABASE_URL": f"sqlite:///{tmp / '.demo' / 'shop.db'}",
        "REGULARIZATION_SCHEDULE_CRON": f"{far.minute} {far.hour} * * *",
    }
    run_demo(tmp, env)

    port = free_port()
    log_path = tmp / "dev.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    # Its own process group: `make`, `dagster dev` and the webserver, daemon and code
    # server it starts are all stopped together.
    proc = subprocess.Popen(
        ["make", "-s", "--no-print-directory", "-C", str(ROOT), "dev"],
        env={**env, "DAGSTER_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/server_info", [proc], timeout=180)
        shots = Path(os.environ.get("UI_SCREENSHOTS_DIR") or tmp / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        yield f"http://127.0.0.1:{port}", shots, env["REGULARIZATION_DATABASE_URL"], log_path
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
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


def test_make_dev_starts_without_warnings(webserver):
    *_, log_path = webserver
    log = log_path.read_text()
    assert "superseded" not in log and "Found a dagster instance configuration" not in log, log


def test_the_asset_graph_shows_the_lineage(webserver, page):
    base, shots, *_ = webserver
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


CHECK_STATUSES = ("Succeeded", "Failed", "Warning", "Errored", "Skipped", "Executing")


def _check_status(page, name: str) -> str:
    """The status the checks list shows for ``name``: the first status word after its name."""
    page.get_by_text(name).first.wait_for(state="visible")
    page.wait_for_timeout(1000)
    lines = [line.strip() for line in page.locator("body").inner_text().splitlines()]
    for index, line in enumerate(lines):
        if line == name:
            for after in lines[index + 1 : index + 4]:
                if after in CHECK_STATUSES:
                    return after
    raise AssertionError(f"no status shown for {name}")


def test_the_checks_show_the_state_the_demo_run_left(webserver, page):
    base, shots, *_ = webserver
    page.goto(f"{base}/assets/app_orders?view=checks")
    _dismiss_welcome(page)
    # The demo's inconsistent payments stay, by design, for a human.
    assert _check_status(page, "transactions_consistent") == "Failed"
    page.screenshot(path=str(shots / "app-orders-checks.png"))


def test_after_a_demo_run_the_orphan_check_passes_on_app_orders(webserver, page):
    base, *_ = webserver
    page.goto(f"{base}/assets/app_orders?view=checks")
    _dismiss_welcome(page)
    # Held orders are counted apart: after a good run the orphan check passes.
    assert _check_status(page, "no_orphaned_pending_orders") == "Succeeded"


def test_the_audit_page_leads_with_the_operators_plots_and_shows_no_nan(webserver, page):
    base, shots, *_ = webserver
    page.goto(f"{base}/assets/regularization_audit")
    _dismiss_welcome(page)
    page.get_by_text("orphans_remaining", exact=True).first.wait_for(state="visible")
    page.get_by_text("preview", exact=True).first.wait_for(state="visible")
    text = page.locator("body").inner_text()
    assert not re.search(r"\b(nan|NaT)\b", text), "nan/NaT on the audit page"
    page.get_by_role("button", name="Plots").click()
    page.locator("canvas, svg.recharts-surface").first.wait_for(state="visible")
    titles = []
    for key in AUDIT_PLOTS:
        # The description names these keys too: the last match is the plot's title.
        title = page.get_by_text(key, exact=True).last
        title.wait_for(state="visible")
        box = title.bounding_box()
        titles.append((round(box["y"]), box["x"], key))
    assert [key for *_, key in sorted(titles)] == AUDIT_PLOTS
    for dropped in ("action_dry_run", "action_failed", "audit_rows"):
        assert page.get_by_text(dropped, exact=True).count() == 0, dropped
    page.wait_for_timeout(1500)
    page.screenshot(path=str(shots / "audit-plots.png"))


@pytest.mark.parametrize(
    ("kind", "name", "words"),
    [
        ("schedules", jobs.regularize_completed_orders_every_5_minutes.name, "every five minutes"),
        ("sensors", jobs.regularize_on_orphan_alert.name, "fails outside the job"),
    ],
)
def test_the_schedule_and_the_sensor_show_their_descriptions(webserver, page, kind, name, words):
    base, *_ = webserver
    page.goto(f"{base}/locations/regularization_pipeline/{kind}/{name}")
    _dismiss_welcome(page)
    page.get_by_text(words).first.wait_for(state="visible")


def test_the_documented_graphql_launch_flips_orders(webserver):
    base, _, shop_url, _ = webserver
    engine = create_app_engine(shop_url)
    shop = ShopWriter(engine)
    orphans = [shop.orphan(paid_minutes_ago=30) for _ in range(3)]
    text = (ROOT / "docs" / "launching.md").read_text()
    block = text.split("### From Python", 1)[-1].split("## From Python", 1)[-1]
    block = block.split("```python", 1)[1].split("```", 1)[0]
    os.environ["DAGSTER_PORT"] = base.rsplit(":", 1)[1]
    try:
        namespace: dict = {}
        exec(compile(block, "docs/launching.md", "exec"), namespace)  # noqa: S102 - our own docs
    finally:
        del os.environ["DAGSTER_PORT"]
    assert namespace["status"].value == "SUCCESS"
    orders = shop.tables.orders
    with engine.connect() as conn:
        statuses = conn.execute(
            sa.select(orders.c.status).where(orders.c.id.in_(orphans))
        ).scalars()
        assert sorted(statuses) == ["completed"] * 3
    engine.dispose()
