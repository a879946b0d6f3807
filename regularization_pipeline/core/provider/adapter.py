"""What an adapter is: how one provider is asked about a transaction and how its answer reads.

The transport (token bucket, ``Retry-After``, timeouts, bounded retries, HTTP statuses,
never logging the token) is :class:`~regularization_pipeline.core.provider.gateway.GatewayVerifier`'s,
the same for every provider. An adapter only says which URL to ask, which headers
authenticate it, and what the provider's own object means in our terms.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Protocol

from regularization_pipeline.core.redaction import redact
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow

MISSING = object()


@dataclass(frozen=True)
class Request:
    """One read-only GET: the path under the base URL and its query parameters."""

    path: str
    params: list[tuple[str, str]] = field(default_factory=list)


class ProviderAdapter(Protocol):
    name: str
    api_version: str | None

    def request(self, order: OrderRow, transaction: TransactionRow) -> Request: ...

    def read(self, document: Any) -> Any:  # -> ProviderAnswer
        ...

    def headers(self, token: str | None) -> dict[str, str]: ...


def reference_of(transaction: TransactionRow) -> str:
    """The transaction's provider reference, or its own id when the mapping has none."""
    ref = transaction.reference
    return str(ref if ref not in (None, "") else transaction.id)


def quoted(value: Any) -> str:
    return urllib.parse.quote(str(value), safe="")


def dig(document: Any, dotted: str) -> Any:
    """The value at ``a.b.0.c`` in parsed JSON, or :data:`MISSING` when any step is missing."""
    node = document
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def shown(value: Any) -> str:
    """A provider value short and printable enough for an audit reason (our words around it)."""
    text = value if isinstance(value, str) else json.dumps(value)[:40]
    return redact("".join(ch for ch in text if ch.isprintable())[:40])  # foreign text
