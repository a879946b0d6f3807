"""What an operator runs besides the job: ``doctor`` (read-only, before the first run), the
operator tools acting on one order or event, retention.

May import: everything in ``core`` below it (the regularizer, decisions, detection, delivery,
shop, the root basics).
"""
