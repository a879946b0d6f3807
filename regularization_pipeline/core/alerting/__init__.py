"""Telling a human: incidents, the channels alert messages go to, and their formats.

May import: ``core.delivery.signing`` (alerts are signed like events) and the root basics.
"""
