"""billd-client's transport without a server: retries, their bound, and the
idempotency key each call sends, through httpx's MockTransport."""

from __future__ import annotations

import asyncio
import json
from typing import Callable

import httpx
import pytest

from billd_client import AsyncBilld, Billd, BilldError

Answer = Callable[[httpx.Request], httpx.Response]


def unavailable(_: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"error": {"code": "store_unavailable", "message": "down"}})


def counted(_: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, json={"feature": "generations", "used": 1, "limit": 3, "remaining": 2, "replayed": False}
    )


def lost(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


class Script:
    """Answers in order, recording every request and every backoff asked for."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.sent: list[httpx.Request] = []
        self.waits: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return self.answers.pop(0)(request)

    def sync(self, max_retries: int = 3) -> Billd:
        billd = Billd(
            "http://billd.test/",
            "k",
            http_client=httpx.Client(transport=httpx.MockTransport(self)),
            max_retries=max_retries,
        )
        billd.sleep = self.waits.append
        return billd

    def bodies(self) -> list[dict[str, object]]:
        return [json.loads(r.content) if r.content else {} for r in self.sent]


def test_a_503_is_retried_with_the_same_idempotency_key_until_billd_answers() -> None:
    script = Script(unavailable, unavailable, counted)
    answer = script.sync().consume_usage("alice", "generations", amount=2)

    assert answer["used"] == 1
    keys = [b["idempotency_key"] for b in script.bodies()]
    assert len(keys) == 3 and len(set(keys)) == 1 and len(str(keys[0])) == 36
    assert script.bodies()[0]["amount"] == 2
    assert str(script.sent[0].url) == "http://billd.test/v1/customers/alice/usage/generations"
    assert script.sent[0].headers["authorization"] == "Bearer k"
    assert len(script.waits) == 2


def test_retries_are_bounded_and_the_last_503_is_raised_with_its_code() -> None:
    script = Script(unavailable, unavailable, unavailable)
    with pytest.raises(BilldError) as error:
        script.sync(max_retries=2).get_entitlements("alice")
    assert (error.value.status, error.value.code) == (503, "store_unavailable")
    assert len(script.sent) == 3


def test_backoff_doubles_up_to_its_cap_and_follows_retry_after() -> None:
    billd = Billd("http://billd.test", "k", retry_base_delay=1.0, retry_max_delay=4.0)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 4.0)]:
        waits = [billd.backoff(attempt, None) for _ in range(50)]
        assert all(0 <= w <= ceiling for w in waits), (attempt, max(waits))
    assert billd.backoff(0, 3.0) == 3.0
    assert billd.backoff(0, 60.0) == 4.0

    def later(_: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "2"}, json={"error": {"code": "stripe_unavailable", "message": "x"}})

    script = Script(later, counted)
    script.sync().consume_usage("alice", "generations")
    assert script.waits == [2.0]


def test_each_call_has_its_own_key_unless_the_caller_passes_one() -> None:
    ok: Answer = lambda _: httpx.Response(200, json={})  # noqa: E731
    script = Script(counted, counted, ok, ok)
    billd = script.sync()
    billd.consume_usage("alice", "generations")
    billd.consume_usage("alice", "generations", idempotency_key="site-1")
    billd.cancel_subscription("a/b")
    billd.cancel_subscription("alice", idempotency_key="cancel-1")

    first, second = script.bodies()[:2]
    assert first["idempotency_key"] != second["idempotency_key"] == "site-1"
    assert "amount" not in first
    assert script.sent[2].url.raw_path == b"/v1/customers/a%2Fb/subscription/cancel"
    assert len(script.sent[2].headers["idempotency-key"]) == 36
    assert script.sent[2].content == b""
    assert script.sent[3].headers["idempotency-key"] == "cancel-1"


def test_a_lost_connection_is_retried_only_when_repeating_the_request_is_safe() -> None:
    keyed = Script(lost, counted)
    assert keyed.sync().consume_usage("alice", "generations")["used"] == 1
    assert len(keyed.sent) == 2

    reading = Script(lost, lambda _: httpx.Response(200, json={"plan": "free"}))
    reading.sync().get_entitlements("alice")
    assert len(reading.sent) == 2

    # A portal session without a key: a second one could be created.
    portal = Script(lost, lambda _: httpx.Response(200, json={"url": "https://portal"}))
    with pytest.raises(httpx.ConnectError):
        portal.sync().create_portal("alice", return_url="https://app")
    assert len(portal.sent) == 1


def test_other_errors_are_raised_at_once_and_unset_query_parameters_are_left_out() -> None:
    def quota(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            402,
            json={"error": {"code": "quota_exceeded", "message": "quota exceeded", "limit": 3, "used": 3}},
        )

    script = Script(quota, lambda _: httpx.Response(502, text="<html>bad gateway</html>"), lambda _: httpx.Response(200, json={"data": []}))
    billd = script.sync()
    with pytest.raises(BilldError) as refused:
        billd.consume_usage("alice", "generations")
    assert (refused.value.code, refused.value.details) == ("quota_exceeded", {"limit": 3, "used": 3})
    with pytest.raises(BilldError) as gateway:
        billd.list_plans()
    assert (gateway.value.status, gateway.value.code) == (502, "unexpected_response")
    billd.list_events(status="dead", limit=5)
    assert str(script.sent[2].url) == "http://billd.test/v1/admin/events?status=dead&limit=5"
    assert len(script.sent) == 3


def test_the_async_client_retries_like_the_sync_one() -> None:
    script = Script(unavailable, counted)
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def run() -> None:
        async with AsyncBilld(
            "http://billd.test", "k", http_client=httpx.AsyncClient(transport=httpx.MockTransport(script))
        ) as billd:
            billd.sleep = record
            assert (await billd.consume_usage("alice", "generations"))["used"] == 1

    asyncio.run(run())
    keys = [b["idempotency_key"] for b in script.bodies()]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert len(waits) == 1
