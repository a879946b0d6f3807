"""docs/explanation.md: its figures come from the code's defaults, its alerts exist."""

import re

from regularization_pipeline.core.delivery.outbox import RetryPolicy
from regularization_pipeline.defs.resources import EventPublisherResource
from tests.support import ROOT

EXPLANATION = (ROOT / "docs" / "explanation.md").read_text(encoding="utf-8")


class _NoJitter:
    def uniform(self, _low: float, _high: float) -> float:
        return 0.0


def test_the_dead_letter_window_is_the_sum_of_the_default_retry_delays():
    resource, policy = EventPublisherResource(), RetryPolicy()
    # The deployment's defaults are the policy's.
    assert (resource.max_attempts, resource.base_delay_seconds, resource.max_delay_seconds) == (
        policy.max_attempts,
        policy.base_delay_seconds,
        policy.max_delay_seconds,
    )
    # The event is dead after its last attempt: a wait follows every attempt but that one.
    waits = [policy.delay(attempt, _NoJitter()) for attempt in range(1, policy.max_attempts)]
    total = sum(waits)
    assert (
        f"{' + '.join(f'{w:,.0f}' for w in waits)} s = **{total:,.0f} s, about {total / 60:.0f} minutes**"
        in EXPLANATION
    )
    low, high = total * (1 - policy.jitter) / 60, total * (1 + policy.jitter) / 60
    assert f"{low:.0f} to {high:.0f} minutes" in EXPLANATION


def test_the_four_diagrams_are_there_in_mermaid():
    kinds = re.findall(r"^```mermaid\n([\w-]+)", EXPLANATION, re.MULTILINE)
    assert kinds == ["sequenceDiagram", "stateDiagram-v2", "stateDiagram-v2", "flowchart"]
    for block in re.findall(r"^```mermaid\n(.*?)^```", EXPLANATION, re.MULTILINE | re.DOTALL):
        # A semicolon ends a Mermaid statement: one inside a message would cut it short.
        assert ";" not in block


def test_every_alert_the_failure_table_names_is_one_monitoring_documents():
    monitoring = (ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8")
    table = EXPLANATION.split("## Failure modes", 1)[1]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")][2:]
    named = {name for row in rows for name in re.findall(r"`(\w+)`", row[2])}
    assert named  # the column is read
    for name in named:
        assert f"### `{name}`" in monitoring, f"no alert {name} in docs/monitoring.md"
