"""Request signing: HMAC-SHA256 over the timestamp and the exact body, one ``v1`` signature per
secret (so a rotation overlaps), and the receiver's check. Events and alerts are signed alike."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

# Webhook headers (docs/events.md shows how a receiver checks them).
SIGNATURE_HEADER = "X-Regularization-Signature"


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 hex over ``f"{timestamp}.{body}"``; the header is ``t=<timestamp>,v1=<hex>``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[str | bytes], timestamp: int, body: bytes) -> str:
    """``t=<timestamp>,v1=<hex>``, one ``v1`` per secret: while a secret rotates the receiver
    accepts the request with whichever of the two it holds."""
    return ",".join([f"t={timestamp}", *(f"v1={sign(s, timestamp, body)}" for s in secrets)])


def verify_signature(
    secret: str | bytes,
    header: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_seconds: float = 300.0,
) -> bool:
    """What a Python receiver runs: constant-time compare, and a timestamp no older than the tolerance."""
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts.get("t", [""])[0])
    except ValueError:
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", []))
