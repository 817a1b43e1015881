"""Drives stripe-sim with the official stripe SDK: customer, checkout, /_sim/ completion,
subscriptions, test clock, refund, events, and webhook signatures via construct_event."""

import json
import os
import sys
import time
import urllib.request

import stripe

BASE = os.environ["SIM_API_BASE"]
SECRET = os.environ["SIM_WEBHOOK_SECRET"]
RECEIVER = os.environ["SIM_RECEIVER"]

stripe.api_key = "sk_test_python_sdk"
stripe.api_base = BASE
stripe.max_network_retries = 0


def sim_control(path, form):
    req = urllib.request.Request(BASE + path, data=form.encode(), method="POST")
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


def check(cond, what):
    if not cond:
        print("FAILED:", what)
        sys.exit(1)


product = stripe.Product.create(name="Standard")
price = stripe.Price.create(
    product=product.id, currency="eur", unit_amount=3000, recurring={"interval": "month"}
)
start = 1_767_225_600
clock = stripe.test_helpers.TestClock.create(frozen_time=start, name="python")
customer = stripe.Customer.create(
    email="py@example.com", test_clock=clock.id, metadata={"billd_customer_id": "py-1"}
)
check(customer.id.startswith("cus_"), "customer id")

session = stripe.checkout.Session.create(
    mode="subscription",
    customer=customer.id,
    line_items=[{"price": price.id, "quantity": 1}],
    success_url="https://example.com/ok",
    subscription_data={"metadata": {"billd_plan": "standard"}},
)
check(session.status == "open" and session.url, "open session with url")
done = sim_control(f"/_sim/checkout/sessions/{session.id}/complete", "payment_method=pm_card_visa")
check(done["status"] == "complete", "completed session")

subs = stripe.Subscription.list(customer=customer.id, status="all")
check(len(subs.data) == 1, "one subscription")
sub = subs.data[0]
check(sub.status == "active", "active subscription")
check(sub.metadata["billd_plan"] == "standard", "subscription metadata")
item = sub["items"]["data"][0]
check(item["current_period_start"] == start, "period start on the item")
end = item["current_period_end"]

stripe.test_helpers.TestClock.advance(clock.id, frozen_time=end + 3600)
for _ in range(50):
    if stripe.test_helpers.TestClock.retrieve(clock.id).status == "ready":
        break
    time.sleep(0.05)
invoices = stripe.Invoice.list(customer=customer.id)
check(len(invoices.data) == 2, "renewal invoice")
check(all(i.status == "paid" for i in invoices.data), "invoices paid")
renewed = stripe.Subscription.retrieve(sub.id)
check(renewed["items"]["data"][0]["current_period_start"] == end, "renewed period")

charges = stripe.Charge.list(customer=customer.id)
check(len(charges.data) == 2, "two charges")
refund = stripe.Refund.create(charge=charges.data[0].id, amount=500)
check(refund.status == "succeeded" and refund.amount == 500, "partial refund")
try:
    stripe.Refund.create(charge=charges.data[0].id, amount=10_000)
    check(False, "over-refund must fail")
except stripe.InvalidRequestError as e:
    check(e.http_status == 400, "over-refund is a 400")

types = {e.type for e in stripe.Event.list(limit=100).auto_paging_iter()}
for t in [
    "customer.created",
    "checkout.session.completed",
    "customer.subscription.created",
    "invoice.paid",
    "invoice.upcoming",
    "charge.refunded",
]:
    check(t in types, "event " + t)
refunded_events = stripe.Event.list(type="charge.refunded")
check(len(refunded_events.data) == 1, "events filtered by type")

try:
    stripe.Customer.retrieve("cus_missing")
    check(False, "missing customer must fail")
except stripe.InvalidRequestError as e:
    check(e.http_status == 404 and e.code == "resource_missing", "404 resource_missing")

received = []
for _ in range(200):
    with urllib.request.urlopen(RECEIVER) as resp:
        received = json.load(resp)
    if any('"charge.refunded"' in body for _, body in received):
        break
    time.sleep(0.05)
check(received, "webhooks received")
seen = set()
for sig, body in received:
    event = stripe.Webhook.construct_event(body, sig, SECRET)
    seen.add(event.type)
check("charge.refunded" in seen and "checkout.session.completed" in seen, "webhook types")
try:
    stripe.Webhook.construct_event(received[0][1] + " ", received[0][0], SECRET)
    check(False, "tampered payload must not verify")
except stripe.SignatureVerificationError:
    pass

print("SCENARIO OK", len(received), "webhooks verified")
