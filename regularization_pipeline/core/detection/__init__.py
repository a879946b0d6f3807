"""What is wrong in the shop, read set-based and changing nothing: orphans (the scan window,
the orphan and fixable predicates, counts and pages), the inconsistency kinds and their scans,
and what is held.

May import: ``core.shop`` and the root basics.
"""
