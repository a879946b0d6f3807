"""The words of a decision: what the audit trail records for an order and what a run counts.

One definition each; the audit table stores them, the UI and the CLI show them, the held
counts and the metadata keys are built from them.
"""

from __future__ import annotations

# One audit row per decision the pipeline takes on an order.
REGULARIZED = "regularized"
SKIPPED = "skipped"
FAILED = "failed"
QUARANTINED = "quarantined"
INCONSISTENT = "inconsistent"
DRY_RUN = "dry-run"
RELEASED = "released"
AUDIT_ACTIONS = (REGULARIZED, SKIPPED, FAILED, QUARANTINED, INCONSISTENT, DRY_RUN, RELEASED)
