"""Progress lines in the run log: every order for small runs, throttled for large ones."""

from types import SimpleNamespace

from regularization_pipeline.core.regularizer import OrderOutcome, RunSummary
from regularization_pipeline.defs import assets


def test_every_order_is_logged_while_small_then_one_line_per_interval_and_the_last():
    lines: list[str] = []
    context = SimpleNamespace(log=SimpleNamespace(info=lines.append))  # only the run log is used
    now = [0.0]
    progress = assets._progress_logger(context, clock=lambda: now[0])
    summary = RunSummary(run_id="r")
    limit = 1000
    for order_id in range(1, limit + 1):
        now[0] += 0.01  # 10 s for the whole run
        outcome = OrderOutcome(order_id, "regularized", "completed transaction verified")
        summary.record(outcome)
        progress(outcome, summary, limit)

    small = assets.PROGRESS_EVERY_ORDER_UP_TO
    assert lines[:small] == [f"{i}/{limit} regularized order {i}" for i in range(1, small + 1)]
    throttled = lines[small:-1]
    # 9 s after the first hundred orders, one line every 5 s at most.
    assert 1 <= len(throttled) <= 9 / assets.PROGRESS_EVERY_SECONDS + 1
    assert all(" processed: " in line for line in throttled)
    assert lines[-1] == f"{limit}/{limit} regularized order {limit}"
