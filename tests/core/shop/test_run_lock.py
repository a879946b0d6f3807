"""The shop's run lock: a second run, in another process, is refused busy and changes nothing;
the holder's death (SIGKILL) frees it at once. PostgreSQL advisory lock, MariaDB GET_LOCK,
SQLite an OS file lock beside the database file."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from regularization_pipeline.core.errors import BusyError
from regularization_pipeline.core.regularizer import Regularizer
from regularization_pipeline.core.run import RunOptions
from regularization_pipeline.core.shop import run_lock
from tests.support import ROOT
from tests.support.reliability import url_of
from tests.support.rows import audit_rows, no_sleep, outbox_per_order

HOLD = """
import sys, time
from regularization_pipeline.core.shop import run_lock
from regularization_pipeline.core.shop.engine import create_app_engine
engine = create_app_engine(sys.argv[1])
with run_lock.hold(engine, "regularization_", "holder-run"):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_in_another_process(shop) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, url_of(shop.engine)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_while_another_holds_the_lock_is_refused_busy_and_changes_nothing(shop):
    ids = shop.orphans(3)
    holder = hold_in_another_process(shop)
    try:
        with pytest.raises(BusyError) as busy:
            Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))
    finally:
        holder.kill()
        holder.wait()
    if shop.engine.dialect.name == "mysql":  # MariaDB keeps no note: its connection is named
        assert re.fullmatch(r"busy: run on database connection \d+ since \S+Z", str(busy.value))
    else:
        assert re.fullmatch(r"busy: run holder-run since \d{4}-\d\d-\d\dT\S+Z", str(busy.value))
    assert [shop.status_of(i) for i in ids] == ["pending"] * 3
    assert audit_rows(shop) == [] and outbox_per_order(shop) == {}


def test_the_lock_dies_with_its_holder_and_the_next_run_goes_at_once(shop):
    ids = shop.orphans(3)
    holder = hold_in_another_process(shop)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    began = time.monotonic()
    summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))
    assert summary.regularized == 3 and time.monotonic() - began < 10
    assert outbox_per_order(shop) == {str(i): 1 for i in ids}


def test_the_lock_is_reentrant_in_its_thread_and_released_after(shop):
    """The CLI holds it around the Dagster run whose Regularizer.run takes it again."""
    shop.orphans(2)
    with run_lock.hold(shop.engine, "regularization_", "cli-run"):
        summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))
    assert summary.regularized == 2
    with run_lock.hold(shop.engine, "regularization_", "next-run"):
        pass
