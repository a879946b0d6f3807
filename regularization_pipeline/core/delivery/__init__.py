"""Delivering OrderCompleted after commit: the event and its signature, the outbox (leases,
retries, dead letter, budget), the publishers that receive it (webhook, Python handlers, ...).

May import: ``core.shop`` and the root basics.
"""
