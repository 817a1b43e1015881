// Drives stripe-sim with the official Stripe Node SDK (npm `stripe`):
// products and prices, a Checkout session completed through /_sim/, a
// renewal by a test clock, a failed renewal with a declining card, a refund,
// Stripe's validation errors, and every webhook delivered to a local HTTP
// endpoint verified with stripe.webhooks.constructEvent.
//
// Usage: node scenario.mjs <emulator base url>
// The SDK is loaded from $BILLD_NODE_SDK/node_modules/stripe (default
// /var/cache/billd-node-sdk, where scripts/test.sh installs it), so no
// node_modules lives in the repository. Prints one JSON object on stdout;
// the Rust test (tests/sim/node.rs) asserts on it. Exits 1 on any error.

import { createRequire } from 'node:module';
import http from 'node:http';
import path from 'node:path';

const base = process.argv[2];
if (!base) {
  console.error('usage: node scenario.mjs <emulator base url>');
  process.exit(2);
}
const sdkDir = process.env.BILLD_NODE_SDK || '/var/cache/billd-node-sdk';
const Stripe = createRequire(path.join(sdkDir, 'package.json'))('stripe');

const url = new URL(base);
const stripe = new Stripe('sk_test_node_sdk', {
  host: url.hostname,
  port: Number(url.port),
  protocol: 'http',
  maxNetworkRetries: 0,
});

// 2026-01-01T00:00:00Z: the clock starts at a fixed instant, not today.
const START = 1_767_225_600;

// ----------------------------------------------------------- webhooks
// Every delivery is kept raw (constructEvent needs the exact bytes) and
// answered 200; verification happens once the scenario is done, when the
// endpoint's secret is known for certain.
const deliveries = [];
const waiters = [];
const receiver = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    deliveries.push({ body: Buffer.concat(chunks).toString('utf8'), sig: req.headers['stripe-signature'] });
    res.writeHead(200).end();
    for (const w of [...waiters]) w();
  });
});
await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
const hookUrl = `http://127.0.0.1:${receiver.address().port}/hook`;

/** Resolves once every type in `types` has been delivered, or rejects after 20 s. */
function deliveredTypes(types) {
  const has = () => {
    const seen = new Set(deliveries.map((d) => JSON.parse(d.body).type));
    return types.every((t) => seen.has(t));
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      const seen = [...new Set(deliveries.map((d) => JSON.parse(d.body).type))];
      reject(new Error(`webhooks ${types} not all delivered; got ${seen}`));
    }, 20_000);
    const check = () => {
      if (has()) {
        clearTimeout(timer);
        waiters.splice(waiters.indexOf(check), 1);
        resolve();
      }
    };
    waiters.push(check);
    check();
  });
}

/** Advances a test clock and waits until the emulator has run everything due. */
async function advance(clock, to) {
  await stripe.testHelpers.testClocks.advance(clock, { frozen_time: to });
  const deadline = Date.now() + 20_000;
  for (;;) {
    const c = await stripe.testHelpers.testClocks.retrieve(clock);
    if (c.status === 'ready') return c;
    if (Date.now() > deadline) throw new Error(`test clock ${clock} still ${c.status}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The error a call fails with, in the fields Stripe's SDK exposes. */
async function errorOf(call) {
  try {
    await call();
  } catch (e) {
    return { type: e.type, status: e.statusCode, code: e.code ?? null, param: e.param ?? null, message: e.message };
  }
  throw new Error('the call was expected to fail');
}

const out = { sdk: Stripe.PACKAGE_VERSION, api_version: Stripe.API_VERSION };

const endpoint = await stripe.webhookEndpoints.create({ url: hookUrl, enabled_events: ['*'] });

// ------------------------------------------------- products and prices
const product = await stripe.products.create({ name: 'Standard' });
const price = await stripe.prices.create({
  product: product.id,
  currency: 'eur',
  unit_amount: 3000,
  recurring: { interval: 'month' },
  lookup_key: 'node_standard_monthly',
});
const found = await stripe.prices.list({ lookup_keys: ['node_standard_monthly'] });
out.price = { amount: price.unit_amount, interval: price.recurring.interval, by_lookup_key: found.data.map((p) => p.id).includes(price.id) };

// ---------------------------------------------------- Checkout completed
const clock = await stripe.testHelpers.testClocks.create({ frozen_time: START, name: 'node' });
const customer = await stripe.customers.create({ email: 'node@example.com', test_clock: clock.id });
const session = await stripe.checkout.sessions.create({
  mode: 'subscription',
  customer: customer.id,
  line_items: [{ price: price.id, quantity: 1 }],
  success_url: 'https://example.com/ok',
  subscription_data: { metadata: { plan: 'standard' } },
});
const completed = await fetch(`${base}/_sim/checkout/sessions/${session.id}/complete`, {
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: 'payment_method=pm_card_visa',
});
if (!completed.ok) throw new Error(`completing ${session.id}: ${completed.status} ${await completed.text()}`);
const done = await stripe.checkout.sessions.retrieve(session.id);
const subs = await stripe.subscriptions.list({ customer: customer.id, status: 'all' });
const sub = subs.data[0];
out.checkout = {
  opened: session.status,
  status: done.status,
  subscriptions: subs.data.length,
  subscription_status: sub.status,
  metadata_plan: sub.metadata.plan,
  period_start: sub.items.data[0].current_period_start,
  period_end: sub.items.data[0].current_period_end,
};

// ------------------------------------------------ renewal by a test clock
const firstEnd = sub.items.data[0].current_period_end;
await advance(clock.id, firstEnd + 3600);
const renewed = await stripe.subscriptions.retrieve(sub.id);
const paidInvoices = await stripe.invoices.list({ customer: customer.id });
out.renewal = {
  status: renewed.status,
  period_start: renewed.items.data[0].current_period_start,
  period_end: renewed.items.data[0].current_period_end,
  invoices: paidInvoices.data.map((i) => i.status).sort(),
};

// ------------------------------------- failed renewal with a declining card
const declining = await stripe.paymentMethods.attach('pm_card_chargeCustomerFail', { customer: customer.id });
await stripe.subscriptions.update(sub.id, { default_payment_method: declining.id });
await advance(clock.id, renewed.items.data[0].current_period_end + 3600);
const failed = await stripe.subscriptions.retrieve(sub.id, { expand: ['latest_invoice'] });
out.failed_renewal = {
  status: failed.status,
  invoice_status: failed.latest_invoice.status,
  attempt_count: failed.latest_invoice.attempt_count,
  amount_due: failed.latest_invoice.amount_due,
};

// ------------------------------------------------------------- a refund
const charges = await stripe.charges.list({ customer: customer.id });
const paid = charges.data.filter((c) => c.status === 'succeeded');
const refund = await stripe.refunds.create({ charge: paid[0].id, amount: 500 });
const refundedCharge = await stripe.charges.retrieve(paid[0].id);
out.refund = {
  status: refund.status,
  amount: refund.amount,
  charge_amount_refunded: refundedCharge.amount_refunded,
  succeeded_charges: paid.length,
  failed_charges: charges.data.filter((c) => c.status === 'failed').length,
};
out.over_refund = await errorOf(() => stripe.refunds.create({ charge: paid[0].id, amount: 1_000_000 }));

// --------------------------------------------- Stripe's validation errors
out.errors = {
  email: await errorOf(() => stripe.customers.create({ email: 'not-an-email' })),
  unit_amount: await errorOf(() => stripe.prices.create({ product: product.id, currency: 'eur', unit_amount: -5 })),
  interval: await errorOf(() =>
    stripe.prices.create({ product: product.id, currency: 'eur', unit_amount: 100, recurring: { interval: 'fortnight' } }),
  ),
  missing: await errorOf(() => stripe.customers.retrieve('cus_missing')),
};

// ------------------------------------------------------------ webhooks
await deliveredTypes([
  'checkout.session.completed',
  'customer.subscription.created',
  'invoice.paid',
  'invoice.payment_failed',
  'charge.refunded',
]);
const types = new Set();
let verified = 0;
for (const d of deliveries) {
  const event = stripe.webhooks.constructEvent(d.body, d.sig, endpoint.secret);
  types.add(event.type);
  verified += 1;
}
let tamperedRejected = false;
try {
  stripe.webhooks.constructEvent(deliveries[0].body + ' ', deliveries[0].sig, endpoint.secret);
} catch (e) {
  tamperedRejected = e instanceof Stripe.errors.StripeSignatureVerificationError;
}
out.webhooks = { received: deliveries.length, verified, types: [...types].sort(), tampered_rejected: tamperedRejected };

receiver.close();
console.log(JSON.stringify(out));
