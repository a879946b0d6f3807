"""The shop's database as we see it: the mapping of its tables, columns, statuses and zone;
engines and server capabilities; the tables this project owns and their migrations; the run lock.

May import: ``core`` root basics (errors, clock, config files, vocabulary). Nothing above.
"""
