// @billd/client's transport without a server: retries, their bound, and the
// idempotency key each call sends, through a scripted fetch.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Billd, BilldError } from "../index.js";

interface Sent {
  url: string;
  method: string;
  headers: Record<string, string>;
  body: string | undefined;
}

/** A fetch that answers `script` in order (an Error is thrown as a lost connection) and records the requests. */
function scripted(script: Array<Response | Error>): { fetch: typeof fetch; sent: Sent[] } {
  const sent: Sent[] = [];
  const fake = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    sent.push({
      url: String(input),
      method: init?.method ?? "GET",
      headers: { ...(init?.headers as Record<string, string>) },
      body: init?.body as string | undefined,
    });
    const next = script.shift();
    if (next === undefined) throw new Error("unexpected request");
    if (next instanceof Error) throw next;
    return next;
  };
  return { fetch: fake as typeof fetch, sent };
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

const unavailable = () => json(503, { error: { code: "store_unavailable", message: "the database is unreachable" } });
const counted = () => json(200, { feature: "generations", used: 1, limit: 3, remaining: 2, replayed: false });

function client(fetch: typeof globalThis.fetch, maxRetries = 3): Billd {
  return new Billd({ baseUrl: "http://billd.test/", apiKey: "k", fetch, maxRetries, retryBaseDelayMs: 0 });
}

test("a 503 is retried with the same idempotency key until billd answers", async () => {
  const { fetch, sent } = scripted([unavailable(), unavailable(), counted()]);
  const answer = await client(fetch).consumeUsage("alice", "generations", { amount: 1 });

  assert.equal(answer.used, 1);
  assert.equal(sent.length, 3);
  const keys = sent.map((s) => JSON.parse(s.body ?? "{}").idempotency_key as string);
  assert.match(keys[0], /^[0-9a-f-]{36}$/);
  assert.deepEqual(keys, [keys[0], keys[0], keys[0]]);
  assert.equal(sent[0].url, "http://billd.test/v1/customers/alice/usage/generations");
  assert.equal(sent[0].headers.Authorization, "Bearer k");
  assert.equal(JSON.parse(sent[0].body ?? "{}").amount, 1);
});

test("retries are bounded: the last 503 is thrown with its code", async () => {
  const { fetch, sent } = scripted([unavailable(), unavailable(), unavailable()]);
  await assert.rejects(client(fetch, 2).getEntitlements("alice"), (e: unknown) => {
    return e instanceof BilldError && e.status === 503 && e.code === "store_unavailable";
  });
  assert.equal(sent.length, 3);
});

test("each call has its own key unless the caller passes one; keyed routes without a key field send the header", async () => {
  const { fetch, sent } = scripted([counted(), counted(), json(200, {}), json(200, {})]);
  const billd = client(fetch);
  await billd.consumeUsage("alice", "generations");
  await billd.consumeUsage("alice", "generations", {}, { idempotencyKey: "site-1" });
  await billd.cancelSubscription("a/b");
  await billd.cancelSubscription("alice", { idempotencyKey: "cancel-1" });

  const [a, b] = sent.map((s) => JSON.parse(s.body ?? "{}").idempotency_key as string | undefined);
  assert.notEqual(a, undefined);
  assert.equal(b, "site-1");
  assert.equal(sent[2].url, "http://billd.test/v1/customers/a%2Fb/subscription/cancel");
  assert.match(sent[2].headers["Idempotency-Key"], /^[0-9a-f-]{36}$/);
  assert.equal(sent[2].body, undefined);
  assert.equal(sent[3].headers["Idempotency-Key"], "cancel-1");
});

test("a lost connection is retried only when repeating the request is safe", async () => {
  const lost = () => new TypeError("fetch failed");
  const keyed = scripted([lost(), counted()]);
  assert.equal((await client(keyed.fetch).consumeUsage("alice", "generations")).used, 1);
  assert.equal(keyed.sent.length, 2);

  const reading = scripted([lost(), json(200, { plan: "free" })]);
  await client(reading.fetch).getEntitlements("alice");
  assert.equal(reading.sent.length, 2);

  // A portal session without a key: a second one could be created.
  const portal = scripted([lost(), json(200, { url: "https://portal" })]);
  await assert.rejects(client(portal.fetch).createPortal("alice", { return_url: "https://app" }), TypeError);
  assert.equal(portal.sent.length, 1);
});

test("errors other than 503 are not retried; query parameters skip what is unset", async () => {
  const quota = json(402, {
    error: { code: "quota_exceeded", message: "quota exceeded", feature: "generations", limit: 3, used: 3, remaining: 0, requested: 1 },
  });
  const { fetch, sent } = scripted([quota, json(502, "<html>bad gateway</html>"), json(200, { data: [] })]);
  const billd = client(fetch);
  await assert.rejects(billd.consumeUsage("alice", "generations"), (e: unknown) => {
    return e instanceof BilldError && e.code === "quota_exceeded" && e.details.remaining === 0 && e.details.feature === "generations";
  });
  await assert.rejects(billd.listPlans(), (e: unknown) => e instanceof BilldError && e.status === 502 && e.code === "unexpected_response");
  await billd.listEvents({ status: "dead", limit: 5 });
  assert.equal(sent.length, 3);
  assert.equal(sent[2].url, "http://billd.test/v1/admin/events?status=dead&limit=5");
});
