"""What is wrong in the shop, read set-based and changing nothing: orphans (the scan window,
the orphan and fixable predicates, counts and pages), the inconsistency scans (the kinds are
words of ``core.verdicts``), and what is held.

May import: ``core.shop`` and the root basics.
"""
