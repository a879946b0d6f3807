"""Stateful provider fakes on 127.0.0.1, answering with the providers' own objects.

No well-kept stateful fake serves Mollie or PayPal, and localstripe (the Stripe one)
does not model refunds on the charge or disputes the way today's API does (see
docs/providers.md), so each fake here keeps the provider's objects in memory and
serves them at the provider's own paths. The object bodies are the example
responses of each provider's published API reference (named on each builder),
changed only in the fields a case is about.
"""

from __future__ import annotations

import base64
import copy
import json
from collections import deque
from typing import Any

from tests.support.http_stubs import Received, Reply, _StubServer


class ProviderFake(_StubServer):
    """``objects`` maps a path (``/v1/payment_intents/pi_1``) to the JSON object served there.

    Requests need ``Authorization: Bearer <token>`` (PayPal: the access token handed out by
    ``POST /v1/oauth2/token`` for ``client_id:client_secret``); ``script`` replies (429s, 5xx)
    come first; ``fail_paths`` answer 500 always (a provider that fails for one order only).
    """

    def __init__(
        self,
        token: str,
        objects: dict[str, Any] | None = None,
        script: list[Reply] | None = None,
        oauth_client: tuple[str, str] | None = None,
    ):
        super().__init__()
        self.token = token
        self.objects = dict(objects or {})
        self.script = deque(script or [])
        self.oauth_client = oauth_client
        self.fail_paths: set[str] = set()
        self.refuse_paths: set[str] = set()

    def put(self, path: str, document: Any) -> None:
        with self.lock:
            self.objects[path] = document

    def answer(self, rec: Received) -> Reply:
        path = rec.path.split("?", 1)[0]
        if self.oauth_client and path == "/v1/oauth2/token":
            expected = "Basic " + base64.b64encode(":".join(self.oauth_client).encode()).decode()
            if rec.headers.get("authorization") != expected:
                return Reply(401, b'{"error":"invalid_client"}')
            body = {"access_token": self.token, "token_type": "Bearer", "expires_in": 32400}
            return Reply(200, json.dumps(body).encode())
        if rec.headers.get("authorization") != f"Bearer {self.token}":
            return Reply(401, b'{"error":{"type":"invalid_request_error"}}')
        with self.lock:
            if self.script:
                return self.script.popleft()
            if path in self.fail_paths:
                return Reply(500, b'{"error":"internal"}')
            if path in self.refuse_paths:
                return Reply(403, b'{"error":"forbidden"}')
            document = self.objects.get(path)
        if document is None:
            return Reply(404, b'{"error":{"code":"resource_missing"}}')
        return Reply(200, json.dumps(document).encode())


# --- Stripe: https://docs.stripe.com/api/payment_intents/object and /api/charges/object ---------


def stripe_charge(**changes: Any) -> dict:
    """The Charge object example of Stripe's API reference."""
    charge = {
        "id": "ch_3MmlLrLkdIwHu7ix0snN0B15",
        "object": "charge",
        "amount": 1099,
        "amount_captured": 1099,
        "amount_refunded": 0,
        "balance_transaction": "txn_3MmlLrLkdIwHu7ix0uke3Ezy",
        "captured": True,
        "created": 1679090539,
        "currency": "usd",
        "disputed": False,
        "livemode": False,
        "paid": True,
        "payment_intent": None,
        "refunded": False,
        "status": "succeeded",
    }
    return {**charge, **changes}


def stripe_payment_intent(id_: str, amount: int, currency: str, **changes: Any) -> dict:
    """The PaymentIntent object example of Stripe's API reference, succeeded, its charge expanded."""
    intent = {
        "id": id_,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": amount,
        "capture_method": "automatic",
        "confirmation_method": "automatic",
        "created": 1680800504,
        "currency": currency,
        "last_payment_error": None,
        "latest_charge": stripe_charge(amount=amount, amount_captured=amount, currency=currency),
        "livemode": False,
        "metadata": {},
        "payment_method_types": ["card"],
        "status": "succeeded",
    }
    return {**intent, **changes}


# --- Mollie: https://docs.mollie.com/reference/get-payment -------------------------------------


def mollie_payment(id_: str, value: str, currency: str, **changes: Any) -> dict:
    """The payment of Mollie's "Get payment" example response, paid."""
    payment = {
        "resource": "payment",
        "id": id_,
        "mode": "test",
        "createdAt": "2024-03-20T09:13:37+00:00",
        "amount": {"value": value, "currency": currency},
        "description": "Order #12345",
        "method": "ideal",
        "metadata": None,
        "status": "paid",
        "paidAt": "2024-03-20T09:28:37+00:00",
        "amountRefunded": {"value": "0.00", "currency": currency},
        "amountRemaining": {"value": value, "currency": currency},
        "profileId": "pfl_QkEhN94Ba",
        "sequenceType": "oneoff",
        "_links": {"self": {"href": f"https://api.mollie.com/v2/payments/{id_}"}},
    }
    return {**payment, **changes}


# --- PayPal: https://developer.paypal.com/docs/api/orders/v2/#orders_get ----------------------


def paypal_capture(value: str, currency: str, **changes: Any) -> dict:
    capture = {
        "id": "3C679366HH908993F",
        "status": "COMPLETED",
        "amount": {"currency_code": currency, "value": value},
        "final_capture": True,
        "seller_protection": {"status": "ELIGIBLE"},
        "create_time": "2018-04-01T21:20:49Z",
    }
    return {**capture, **changes}


def paypal_order(id_: str, value: str, currency: str, *, captures=None, **changes: Any) -> dict:
    """The order of PayPal's "Show order details" example response, its capture completed."""
    order = {
        "id": id_,
        "status": "COMPLETED",
        "intent": "CAPTURE",
        "purchase_units": [
            {
                "reference_id": "d9f80740-38f0-11e8-b467-0ed5f89f718b",
                "amount": {"currency_code": currency, "value": value},
                "payments": {
                    "captures": copy.deepcopy(captures)
                    if captures is not None
                    else [paypal_capture(value, currency)]
                },
            }
        ],
        "create_time": "2018-04-01T21:18:49Z",
    }
    return {**order, **changes}
