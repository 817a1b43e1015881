// @billd/client against a dev-mode billd (started by
// crates/billd/tests/billd/clients.rs, which passes BILLD_URL, BILLD_API_KEY
// and BILLD_SIM_URL): a customer from sign-up through checkout, paid usage
// up to its limit, a plan change and cancellation.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Billd, BilldError } from "../index.js";
import type { Entitlements, FeatureEntitlement, SubscriptionView, UsageAnswer } from "../index.js";

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through cargo test -p billd --test billd clients::`);
  return value;
}

const billd = new Billd({ baseUrl: env("BILLD_URL"), apiKey: env("BILLD_API_KEY") });

/** What the user does on Stripe's Checkout page, done by the emulator. */
async function payInEmulator(sessionId: string): Promise<void> {
  const answer = await fetch(`${env("BILLD_SIM_URL")}/_sim/checkout/sessions/${sessionId}/complete`, {
    method: "POST",
    headers: {
      Authorization: `Basic ${Buffer.from("sk_test_billd_dev:").toString("base64")}`,
      "Content-Type": "application/x-www-form-urlencoded",
    },
    body: "payment_method=pm_card_visa",
  });
  assert.equal(answer.status, 200, await answer.text());
}

function feature(entitlements: Entitlements, name: string): FeatureEntitlement {
  const found = entitlements.features[name];
  assert.ok(found, `no ${name} in ${JSON.stringify(entitlements)}`);
  return found;
}

/** Consumes one generation at a time until billd refuses; the refusal. */
async function consumeUntilRefused(id: string, bound: number): Promise<{ answers: UsageAnswer[]; error: BilldError }> {
  const answers: UsageAnswer[] = [];
  for (let i = 0; i <= bound; i++) {
    try {
      answers.push(await billd.consumeUsage(id, "generations"));
    } catch (error) {
      assert.ok(error instanceof BilldError, String(error));
      return { answers, error };
    }
  }
  assert.fail(`still consuming after ${bound} generations`);
}

test("a customer from sign-up to cancellation", async () => {
  const id = "ts-alice";
  const created = await billd.putCustomer(id, { email: "alice@example.com", name: "Alice" });
  assert.equal(created.id, id);
  assert.equal(created.email, "alice@example.com");
  assert.equal((await billd.getCustomer(id)).name, "Alice");

  const free = await billd.getEntitlements(id);
  assert.equal(free.plan, "free");
  assert.equal(free.access, "free");
  assert.equal(feature(free, "generations").limit, 3);

  // A key of the caller's own: the same key again is counted once.
  const first = await billd.consumeUsage(id, "generations", {}, { idempotencyKey: "gen-1" });
  const again = await billd.consumeUsage(id, "generations", {}, { idempotencyKey: "gen-1" });
  assert.deepEqual([first.used, first.replayed], [1, false]);
  assert.deepEqual([again.used, again.replayed], [1, true]);

  const onFree = await consumeUntilRefused(id, 3);
  assert.deepEqual(
    onFree.answers.map((a) => a.remaining),
    [1, 0],
  );
  assert.equal(onFree.error.status, 402);
  assert.equal(onFree.error.code, "quota_exceeded");
  assert.equal(onFree.error.details.limit, 3);
  assert.equal(onFree.error.details.requested, 1);

  const checkout = await billd.createCheckout(id, {
    plan: "standard",
    success_url: "https://app.example.com/done?session={CHECKOUT_SESSION_ID}",
    cancel_url: "https://app.example.com/pricing",
  });
  assert.match(checkout.session_id, /^cs_/);
  assert.equal(checkout.plan, "standard");
  await assert.rejects(billd.syncCheckout(id, { session_id: checkout.session_id }), (e: unknown) => {
    return e instanceof BilldError && e.status === 409 && e.code === "checkout_not_complete";
  });
  await payInEmulator(checkout.session_id);
  const paid = await billd.syncCheckout(id, { session_id: checkout.session_id });
  assert.equal(paid.plan, "standard");
  assert.equal(paid.access, "paid");
  const standard = feature(paid, "generations");
  assert.equal(standard.used, 0);

  const onStandard = await consumeUntilRefused(id, standard.limit);
  assert.equal(onStandard.answers.length, standard.limit);
  assert.equal(onStandard.error.code, "quota_exceeded");
  assert.equal(onStandard.error.details.limit, standard.limit);

  const preview = await billd.previewPlanChange(id, { plan: "pro" });
  assert.equal(preview.plan, "pro");
  const changed: SubscriptionView = await billd.changePlan(id, { plan: "pro", proration_date: preview.proration_date });
  assert.equal(changed.status, "changed");
  assert.equal(changed.plan, "pro");
  const pro = feature(changed.entitlements, "generations");
  assert.ok(pro.limit > standard.limit, `${pro.limit} <= ${standard.limit}`);
  assert.equal((await billd.consumeUsage(id, "generations")).used, standard.limit + 1);
  await assert.rejects(billd.changePlan(id, { plan: "pro" }), (e: unknown) => {
    return e instanceof BilldError && e.status === 409 && e.code === "same_plan";
  });

  const cancelled = await billd.cancelSubscription(id);
  assert.equal(cancelled.status, "cancel_scheduled");
  assert.equal(cancelled.cancel_at_period_end, true);
  assert.equal((await billd.getEntitlements(id)).cancel_at_period_end, true);
});

test("errors carry billd's code", async () => {
  await assert.rejects(billd.getEntitlements("ts-nobody"), (e: unknown) => {
    return e instanceof BilldError && e.status === 404 && e.code === "customer_not_found" && e.message !== "";
  });
  const stranger = new Billd({ baseUrl: env("BILLD_URL"), apiKey: "not-a-key" });
  await assert.rejects(stranger.listPlans(), (e: unknown) => {
    return e instanceof BilldError && e.status === 401 && e.code === "unauthorized";
  });
});
