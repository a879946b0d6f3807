"""What a publisher's failure means for its event: retried later, or dead-lettered at once.

Apart from the webhook publisher so that the outbox and the other publishers name them without
importing an HTTP client: httpx (with httpcore) is loaded only where a webhook is sent.
"""

from __future__ import annotations


class PermanentDeliveryError(Exception):
    """The consumer refused the event for good (e.g. HTTP 400): dead-letter it, do not retry."""


class RetryableDeliveryError(Exception):
    """A transient failure; ``retry_after`` (seconds) overrides the backoff when the consumer asked."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after
