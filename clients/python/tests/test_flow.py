"""billd-client against a dev-mode billd: a customer from sign-up through
checkout, paid usage up to its limit, a plan change and cancellation, with
the synchronous and the asynchronous client."""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

import httpx
import pytest

from billd_client import AsyncBilld, Billd, BilldError
from billd_client import models

SUCCESS_URL = "https://app.example.com/done?session={CHECKOUT_SESSION_ID}"
CANCEL_URL = "https://app.example.com/pricing"


def pay_in_emulator(sim_url: str, session_id: str) -> None:
    """What the user does on Stripe's Checkout page, done by the emulator."""
    answer = httpx.post(
        f"{sim_url}/_sim/checkout/sessions/{session_id}/complete",
        auth=("sk_test_billd_dev", ""),
        data={"payment_method": "pm_card_visa"},
    )
    assert answer.status_code == 200, answer.text


def assert_shape(answer: Mapping[str, Any], model: Any) -> None:
    """The answer has every key the model requires and none it lacks: the
    models cannot drift from what billd sends."""
    keys = set(answer)
    assert model.__required_keys__ <= keys, (model.__name__, keys)
    assert keys <= model.__required_keys__ | model.__optional_keys__, (model.__name__, keys)


def test_a_customer_from_sign_up_to_cancellation_sync(billd_url: str, api_key: str, sim_url: str) -> None:
    customer = "py-sync"
    with Billd(billd_url, api_key) as billd:
        created = billd.put_customer(customer, email="sync@example.com", name="Sync")
        assert_shape(created, models.Customer)
        assert created["email"] == "sync@example.com"
        assert billd.get_customer(customer)["name"] == "Sync"

        free = billd.get_entitlements(customer)
        assert_shape(free, models.Entitlements)
        assert_shape(free["features"]["generations"], models.FeatureEntitlement)
        assert (free["plan"], free["access"]) == ("free", "free")
        assert free["features"]["generations"]["limit"] == 3

        first = billd.consume_usage(customer, "generations", idempotency_key="gen-1")
        again = billd.consume_usage(customer, "generations", idempotency_key="gen-1")
        assert_shape(first, models.UsageAnswer)
        assert (first["used"], first["replayed"]) == (1, False)
        assert (again["used"], again["replayed"]) == (1, True)

        used = [billd.consume_usage(customer, "generations")["used"] for _ in range(2)]
        assert used == [2, 3]
        with pytest.raises(BilldError) as refused:
            billd.consume_usage(customer, "generations")
        assert (refused.value.status, refused.value.code) == (402, "quota_exceeded")
        assert refused.value.details["limit"] == 3
        assert refused.value.details["remaining"] == 0

        checkout = billd.create_checkout(
            customer, plan="standard", success_url=SUCCESS_URL, cancel_url=CANCEL_URL
        )
        assert_shape(checkout, models.CheckoutView)
        with pytest.raises(BilldError) as early:
            billd.sync_checkout(customer, session_id=checkout["session_id"])
        assert (early.value.status, early.value.code) == (409, "checkout_not_complete")
        pay_in_emulator(sim_url, checkout["session_id"])
        paid = billd.sync_checkout(customer, session_id=checkout["session_id"])
        assert (paid["plan"], paid["access"]) == ("standard", "paid")
        limit = paid["features"]["generations"]["limit"]
        assert paid["features"]["generations"]["used"] == 0

        billd.consume_usage(customer, "generations", amount=limit - 1)
        assert billd.consume_usage(customer, "generations")["remaining"] == 0
        with pytest.raises(BilldError) as over:
            billd.consume_usage(customer, "generations")
        assert (over.value.code, over.value.details["limit"]) == ("quota_exceeded", limit)

        preview = billd.preview_plan_change(customer, plan="pro")
        assert_shape(preview, models.PreviewView)
        changed = billd.change_plan(customer, plan="pro", proration_date=preview["proration_date"])
        assert_shape(changed, models.SubscriptionView)
        assert (changed["status"], changed["plan"]) == ("changed", "pro")
        assert changed["entitlements"]["features"]["generations"]["limit"] > limit
        assert billd.consume_usage(customer, "generations")["used"] == limit + 1

        cancelled = billd.cancel_subscription(customer)
        assert (cancelled["status"], cancelled["cancel_at_period_end"]) == ("cancel_scheduled", True)
        assert billd.get_entitlements(customer)["cancel_at_period_end"] is True

        with pytest.raises(BilldError) as missing:
            billd.get_entitlements("py-nobody")
        assert (missing.value.status, missing.value.code) == (404, "customer_not_found")


def test_a_customer_from_sign_up_to_cancellation_async(billd_url: str, api_key: str, sim_url: str) -> None:
    async def flow() -> None:
        customer = "py-async"
        async with AsyncBilld(billd_url, api_key) as billd:
            await billd.put_customer(customer, email="async@example.com")
            assert (await billd.get_entitlements(customer))["plan"] == "free"

            answers = await asyncio.gather(
                *(billd.consume_usage(customer, "generations") for _ in range(3))
            )
            assert sorted(a["used"] for a in answers) == [1, 2, 3]
            with pytest.raises(BilldError) as refused:
                await billd.consume_usage(customer, "generations")
            assert (refused.value.status, refused.value.code) == (402, "quota_exceeded")

            checkout = await billd.create_checkout(
                customer, plan="standard", success_url=SUCCESS_URL, cancel_url=CANCEL_URL
            )
            await asyncio.to_thread(pay_in_emulator, sim_url, checkout["session_id"])
            paid = await billd.sync_checkout(customer, session_id=checkout["session_id"])
            assert (paid["plan"], paid["access"]) == ("standard", "paid")
            limit = paid["features"]["generations"]["limit"]
            await billd.consume_usage(customer, "generations", amount=limit)
            with pytest.raises(BilldError) as over:
                await billd.consume_usage(customer, "generations")
            assert over.value.code == "quota_exceeded"

            changed = await billd.change_plan(customer, plan="pro")
            assert (changed["status"], changed["plan"]) == ("changed", "pro")
            with pytest.raises(BilldError) as same:
                await billd.change_plan(customer, plan="pro")
            assert (same.value.status, same.value.code) == (409, "same_plan")

            cancelled = await billd.cancel_subscription(customer)
            assert cancelled["status"] == "cancel_scheduled"
            resumed = await billd.resume_subscription(customer)
            assert (resumed["status"], resumed["cancel_at_period_end"]) == ("resumed", False)

        async with AsyncBilld(billd_url, "not-a-key") as stranger:
            with pytest.raises(BilldError) as denied:
                await stranger.list_plans()
            assert (denied.value.status, denied.value.code) == (401, "unauthorized")

    asyncio.run(flow())
