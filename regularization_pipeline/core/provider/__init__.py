"""Asking the payment provider about a transaction, rate-limited: the verifier contract and its
answers, the HTTP verifier, the token bucket.

May import: ``core.shop`` and the root basics.
"""
