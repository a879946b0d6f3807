"""The shop's database as we see it: the mapping of its tables, columns, statuses and zone;
engines and server capabilities; the tables this project owns and their migrations; the run lock.

May import: ``core`` root basics (exceptions, errors, clock, config files, redaction, verdicts).
Nothing above.
"""
