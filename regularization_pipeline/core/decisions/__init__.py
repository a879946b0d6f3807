"""Deciding and writing one order (or a batch): the run context and the statements it runs
(the orders' compare-and-set among them), the verification rules and verdicts, the one write
step, batching, audit, attempts and quarantine, and the inconsistency tracker.

May import: ``core.delivery`` (the outbox row written with the flip), ``core.provider`` (the
provider's answer), ``core.detection``, ``core.shop`` and the root basics.
"""
