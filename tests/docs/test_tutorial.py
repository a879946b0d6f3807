"""docs/tutorial.md, run: every block marked runnable, in order, against a real shop.

Blocks fenced as ```bash tutorial run on both servers, ```bash tutorial-postgresql or
```bash tutorial-mariadb on that one only, all in one bash session (so an `export` carries
on), from a folder that holds the repository's docs and virtual environment, with the
variables of the tutorial's step 1 set to a throwaway database and login of the test's own.
"""

import contextlib
import os
import re
import shutil
import subprocess
import uuid

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.demo.shop import ShopWriter, shop_tables
from tests.support import ROOT
from tests.support.databases import (
    MYSQL_ADMIN_URL,
    PG_ADMIN_URL,
    throwaway_database,
)
from tests.support.rows import audit_per_order, completed_ids, outbox_per_order

TUTORIAL = ROOT / "docs" / "tutorial.md"
BLOCK = re.compile(r"^```bash (tutorial(?:-\w+)?)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
ADMINS = {"postgresql": PG_ADMIN_URL, "mariadb": MYSQL_ADMIN_URL}


def tutorial_script(backend: str) -> str:
    blocks = [
        body
        for marker, body in BLOCK.findall(TUTORIAL.read_text(encoding="utf-8"))
        if marker in ("tutorial", f"tutorial-{backend}")
    ]
    return "set -euo pipefail\n" + "\n".join(blocks)


def test_the_tutorial_marks_blocks_for_each_server_and_no_unknown_marker():
    markers = {marker for marker, _ in BLOCK.findall(TUTORIAL.read_text(encoding="utf-8"))}
    assert markers == {"tutorial", "tutorial-postgresql", "tutorial-mariadb"}
    for backend in ADMINS:
        script = tutorial_script(backend)
        assert "grants." in script and "migrate" in script and "--dry-run" in script


def drop_login(backend: str, role: str) -> None:
    admin = sa.create_engine(ADMINS[backend], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if backend == "postgresql":
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        else:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{role}'@'%'"))
    admin.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_every_command_of_the_tutorial_runs_against_a_real_shop(backend, tmp_path):
    role = f"reg_tutorial_{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as cleanup:
        # Last: the login outlives the grants on the database it is dropped with.
        cleanup.callback(drop_login, backend, role)
        url = cleanup.enter_context(throwaway_database("tutorial", ADMINS[backend]))
        engine = create_app_engine(url.render_as_string(hide_password=False))
        shop_tables(with_indexes=False).metadata.create_all(engine)
        shop = ShopWriter(engine)
        orphans = shop.orphans(3, paid_minutes_ago=60)
        cancelled = shop.order(status="cancelled")
        shop.payment(cancelled)
        recent = shop.orphan(paid_minutes_ago=2)

        # The reader's checkout: docs and the virtual environment, nothing else.
        (tmp_path / "docs").symlink_to(ROOT / "docs")
        (tmp_path / ".venv").symlink_to(ROOT / ".venv")
        home = tmp_path / ".dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGULARIZATION_")}
        env.update(
            SHOP_ADMIN_URL=url.render_as_string(hide_password=False),
            PIPELINE_ROLE=role,
            PIPELINE_URL=url.set(username=role, password=None).render_as_string(),
            DAGSTER_HOME=str(home),
        )
        if backend == "mariadb":
            env["MARIADB_ADMIN"] = (
                f"--host={url.host} --port={url.port or 3306} --user={url.username} {url.database}"
            )
        try:
            done = subprocess.run(
                ["bash", "-c", tutorial_script(backend)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
        finally:
            engine.dispose()
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # Steps 2 and 6: doctor as the owner, then as the least-privileged login.
        assert done.stdout.count("verdict: ready") == 2
        # Step 8 decided each orphan and changed nothing; step 10 completed each once, with one
        # event; the held and the recent orders stay as they were.
        assert audit_per_order(shop, "dry-run") == {str(order): 1 for order in orphans}
        assert audit_per_order(shop, "regularized") == {str(order): 1 for order in orphans}
        assert set(orphans) <= completed_ids(shop)
        assert outbox_per_order(shop) == {str(order): 1 for order in orphans}
        assert shop.status_of(cancelled) == "cancelled"
        assert shop.status_of(recent) == "pending"
        engine.dispose()
