"""Provider verification through a real provider stub: what each answer does to the order, rate limits, errors."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.provider.answers import ProviderStatus
from regularization_pipeline.core.provider.gateway import (
    GatewayVerifier,
    ProviderRejectedError,
    ProviderUnavailableError,
)
from regularization_pipeline.core.provider.ratelimit import RateLimiter
from regularization_pipeline.core.provider.settings import GatewaySettings
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow
from regularization_pipeline.core.verdicts import INCONSISTENT, REGULARIZED, SKIPPED
from tests.support.databases import migrated_shop
from tests.support.http_stubs import LOOPBACK_BUFFERS, ProviderStub, Reply, endless_answer
from tests.support.rows import audit_of, no_sleep, outbox_per_order

TOKEN = "sk_test_provider_token_do_not_log"


def settings(url: str, **kw) -> GatewaySettings:
    base = {
        "base_url": url + "/v1",
        "path_template": "/payments/{reference}",
        "status_path": "data.status",
        "max_requests_per_second": 1000,
        "burst": 10,
        "retry_delay_seconds": 0.01,
        "connect_timeout_seconds": 0.5,
        "read_timeout_seconds": 0.5,
    }
    return GatewaySettings(**{**base, **kw})


def with_reference(engine):
    return migrated_shop(engine, SchemaMapping.parse({"transactions": {"reference": "reference"}}))


def test_each_provider_answer_decides_the_order_with_a_clear_audit_reason(engine, caplog):
    shop = with_reference(engine)
    answers = [
        "completed",
        "failed",
        "refunded",
        "pending",
        ProviderStub.GARBAGE,
        ProviderStub.MALFORMED,
        "on_hold",
    ]
    ids = [shop.orphans(1)[0] for _ in answers]
    caplog.set_level(logging.DEBUG)
    with ProviderStub(
        TOKEN, statuses={f"pay_{i}": a for i, a in zip(ids, answers, strict=True)}
    ) as provider:
        verifier = GatewayVerifier(settings(provider.url), TOKEN)
        summary = Regularizer(engine, shop.schema, sleeper=no_sleep, verifier=verifier).run(
            RunOptions(sleep=0)
        )
        verifier.close()
        paths = sorted(r.path for r in provider.snapshot())
    assert paths == sorted(
        f"/v1/payments/pay_{i}" for i in ids
    )  # asked by the provider's reference
    (completed, failed, refunded, pending, garbage, malformed, unknown) = ids
    assert (summary.regularized, summary.inconsistent, summary.skipped) == (1, 2, 4)
    assert shop.status_of(completed) == "completed"
    assert [shop.status_of(i) for i in ids[1:]] == ["pending"] * 6
    assert outbox_per_order(shop) == {str(completed): 1}  # an event for the paid order only

    def last(order_id):
        row = audit_of(shop, order_id)[-1]
        return row.action, row.reason

    assert last(completed) == (REGULARIZED, "completed transaction verified")
    assert last(failed) == (
        INCONSISTENT,
        "provider_failed: provider reports the payment failed (failed)",
    )
    assert last(refunded) == (
        INCONSISTENT,
        "provider_failed: provider reports the payment refunded (refunded)",
    )
    assert last(pending) == (
        SKIPPED,
        "provider reports pending (provider status 'pending'): left for the next run",
    )
    assert last(garbage) == (
        SKIPPED,
        "provider reports unknown (provider answered malformed JSON (HTTP 200)): left for the next run",
    )
    assert last(malformed) == last(garbage)
    assert last(unknown) == (
        SKIPPED,
        "provider reports unknown (unrecognised provider status 'on_hold'): left for the next run",
    )
    assert TOKEN not in caplog.text


def test_reference_falls_back_to_the_transaction_id_and_is_url_encoded():
    with ProviderStub(TOKEN) as provider:
        verifier = GatewayVerifier(settings(provider.url), TOKEN)
        assert (
            verifier.check(OrderRow(1, "pending", "1"), TransactionRow(77, "completed", "1")).status
            == "completed"
        )
        answer = verifier.check(
            OrderRow(1, "pending", "1"), TransactionRow(78, "completed", "1", reference="a/b c")
        )
        paths = [r.path for r in provider.snapshot()]
    assert paths == ["/v1/payments/77", "/v1/payments/a%2Fb%20c"]
    assert answer.status == "completed"


def test_missing_status_path_and_unknown_transaction_leave_the_order_alone():
    script = [
        Reply(200, b'{"data": {"state": "completed"}}'),
        Reply(404, b'{"error":"no such payment"}'),
    ]
    with ProviderStub(TOKEN, script=script) as provider:
        verifier = GatewayVerifier(settings(provider.url), TOKEN)
        tx = TransactionRow(5, "completed", "1", reference="pay_5")
        first, second = (
            verifier.check(OrderRow(1, "pending", "1"), tx),
            verifier.check(OrderRow(1, "pending", "1"), tx),
        )
    assert (first.status, first.detail) == (
        "unknown",
        "no status at 'data.status' in the provider's answer",
    )
    assert (second.status, second.detail) == (
        "unknown",
        "provider does not know the transaction (HTTP 404)",
    )


def test_a_rejected_token_stops_the_run_and_changes_nothing(engine):
    shop = with_reference(engine)
    ids = shop.orphans(3)
    with ProviderStub("the-right-token") as provider:
        verifier = GatewayVerifier(settings(provider.url), TOKEN)
        with pytest.raises(ProviderRejectedError, match="HTTP 401"):
            Regularizer(engine, shop.schema, sleeper=no_sleep, verifier=verifier).run(
                RunOptions(sleep=0)
            )
        assert len(provider.snapshot()) == 1
    assert [shop.status_of(i) for i in ids] == ["pending"] * 3
    assert outbox_per_order(shop) == {} and all(audit_of(shop, i) == [] for i in ids)


def test_a_refusal_of_one_transaction_leaves_that_order_alone_and_the_run_goes_on(engine):
    shop = with_reference(engine)
    refused, fine = shop.orphans(2)
    script = [Reply(422, b'{"error":"invalid reference"}')]
    with ProviderStub(TOKEN, script=script) as provider:
        verifier = GatewayVerifier(settings(provider.url), TOKEN)
        summary = Regularizer(engine, shop.schema, sleeper=no_sleep, verifier=verifier).run(
            RunOptions(sleep=0, max_attempts=1)
        )
        assert len(provider.snapshot()) == 2  # asked once each, the refusal not retried
    assert (summary.regularized, summary.skipped, summary.failed, summary.quarantined) == (
        1,
        1,
        0,
        0,
    )
    assert (shop.status_of(refused), shop.status_of(fine)) == ("pending", "completed")
    [row] = audit_of(shop, refused)
    assert (
        row.action == SKIPPED
        and row.reason
        == "provider reports unknown (provider answered HTTP 422): left for the next run"
    )
    assert outbox_per_order(shop) == {str(fine): 1}


def test_transport_errors_and_timeouts_raise_after_limited_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tx = TransactionRow(5, "completed", "1", reference="pay_5")
    verifier = GatewayVerifier(settings(f"http://127.0.0.1:{port}", max_retries=1), TOKEN)
    with pytest.raises(
        ProviderUnavailableError, match=r"unreachable \(ConnectError\) after 2 tries"
    ):
        verifier.check(OrderRow(1, "pending", "1"), tx)
    with ProviderStub(TOKEN, script=[Reply(delay=2.0)] * 2) as provider:
        verifier = GatewayVerifier(
            settings(provider.url, max_retries=1, read_timeout_seconds=0.2), TOKEN
        )
        with pytest.raises(ProviderUnavailableError, match="ReadTimeout"):
            verifier.check(OrderRow(1, "pending", "1"), tx)
        assert len(provider.snapshot()) == 2


def test_a_huge_answer_is_read_only_up_to_the_cap_and_leaves_the_order_alone():
    """Before, the answer was read whole whatever its size (issue 25): a provider, or whatever
    answers at its address, sending 2 GiB cost 2 GiB of memory."""
    from regularization_pipeline.core.provider.gateway import MAX_ANSWER_BYTES

    head = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"data": {"status": "'
    with endless_answer(head) as (url, sent):
        verifier = GatewayVerifier(settings(url, read_timeout_seconds=5), TOKEN)
        try:
            result = verifier.check(
                OrderRow(1, "pending", "1"),
                TransactionRow(5, "completed", "1", reference="pay_5"),
            )
        finally:
            verifier.close()
    assert result.status == ProviderStatus.UNKNOWN  # never completed on a partial answer
    assert result.detail == "provider answered more than 1024 KiB (HTTP 200)"
    assert sent and sent[0] <= LOOPBACK_BUFFERS + MAX_ANSWER_BYTES  # kernel buffers, not the 2 GiB


def test_a_wrong_token_is_a_rejection_and_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    with ProviderStub("the-right-token") as provider:
        verifier = GatewayVerifier(settings(provider.url), TOKEN)
        with pytest.raises(ProviderRejectedError, match="HTTP 401") as info:
            verifier.check(OrderRow(1, "pending", "1"), TransactionRow(5, "completed", "1"))
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text


def test_settings_are_validated():
    with pytest.raises(ConfigurationError, match="base_url"):
        GatewaySettings.parse(base_url="api.example")
    with pytest.raises(ConfigurationError, match="path_template"):
        GatewaySettings.parse(base_url="http://x", path_template="/p/{payment}")
    with pytest.raises(ConfigurationError, match="status_path"):
        GatewaySettings.parse(base_url="http://x", status_path="data..status")
    s = GatewaySettings.parse(base_url="http://x/", path_template="charges/{transaction_id}")
    assert s.base_url == "http://x" and s.path_template == "/charges/{transaction_id}"
    assert s.classify(" Succeeded ") == "completed" and s.classify(3) == "unknown"


# --- rate limiting, measured on the real stub ------------------------------------------------


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.slow  # measured in real time, about ten seconds
def test_measured_rate_stays_under_max_requests_per_second():
    rate, burst, n = 5, 1, 50
    with ProviderStub(TOKEN) as provider:
        verifier = GatewayVerifier(
            settings(provider.url, max_requests_per_second=rate, burst=burst), TOKEN
        )
        started = time.monotonic()
        for i in range(n):
            assert (
                verifier.check(
                    OrderRow(i, "pending", "1"), TransactionRow(i, "completed", "1")
                ).status
                == "completed"
            )
        elapsed = time.monotonic() - started
        arrivals = [r.at for r in provider.snapshot()]
    expected = (n - burst) / rate
    peak = max_in_any_window(arrivals)
    observed = (len(arrivals) - 1) / (max(arrivals) - min(arrivals))
    print(
        f"\n[rate] {n} verifications at max_requests_per_second={rate}, burst={burst}: {elapsed:.2f}s "
        f"(expected >= {expected:.2f}s), peak {peak} requests in any 1 s window (limit {rate + burst}), "
        f"mean {observed:.2f} req/s"
    )
    assert len(arrivals) == n
    assert peak <= rate + burst
    assert elapsed >= expected - 0.05


def test_429_with_retry_after_means_no_request_before_that_time():
    script = [Reply(429, b'{"error":"slow down"}', headers={"Retry-After": "2"})]
    with ProviderStub(TOKEN, script=script) as provider:
        verifier = GatewayVerifier(settings(provider.url, max_requests_per_second=5), TOKEN)
        tx = TransactionRow(5, "completed", "1", reference="pay_5")
        assert verifier.check(OrderRow(1, "pending", "1"), tx).status == "completed"
        assert verifier.check(OrderRow(2, "pending", "1"), tx).status == "completed"
        first, second, third = (r.at for r in provider.snapshot())
    gap = second - first
    print(
        f"\n[429] Retry-After: 2 -> next request {gap:.3f}s after the 429, then {third - second:.3f}s later"
    )
    assert gap >= 2.0
    assert gap < 3.0  # it did come back once allowed
    # And then at the steady rate, not in a burst: the third starts a full 1/rate after the hold
    # ends. Measured from the 429, not from the second request, whose own arrival can lag its
    # start by a reconnect (seen: 0.05 s) and make an on-time third look early.
    assert third - first >= 2.0 + 1 / 5


def test_repeated_429_gives_up_for_this_order():
    script = [Reply(429, headers={"Retry-After": "0"})] * 3
    with ProviderStub(TOKEN, script=script) as provider:
        verifier = GatewayVerifier(settings(provider.url, max_rate_limited_retries=2), TOKEN)
        with pytest.raises(ProviderUnavailableError, match="429 after 3 tries"):
            verifier.check(OrderRow(1, "pending", "1"), TransactionRow(5, "completed", "1"))
        assert len(provider.snapshot()) == 3


def test_a_retry_after_beyond_the_allowed_wait_fails_fast_without_sleeping():
    slept: list[float] = []
    script = [Reply(429, headers={"Retry-After": "3600"})]
    with ProviderStub(TOKEN, script=script) as provider:
        limiter = RateLimiter(1000, 1, sleeper=slept.append)
        verifier = GatewayVerifier(
            settings(provider.url, max_wait_seconds=30), TOKEN, limiter=limiter
        )
        with pytest.raises(ProviderUnavailableError, match="rate limit"):
            verifier.check(OrderRow(1, "pending", "1"), TransactionRow(5, "completed", "1"))
        assert len(provider.snapshot()) == 1
    assert slept == []
