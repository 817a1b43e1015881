//! Random sequences of API calls: the emulator never fails with a 5xx or panics,
//! keeps Stripe's invariants, and is deterministic for a seed.

use crate::support::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use stripe_sim::Sim;

const CARDS: &[&str] = &[
    "pm_card_visa",
    "pm_card_chargeCustomerFail",
    "pm_card_authenticationRequired",
    "pm_card_createDispute",
    "pm_card_chargeDeclined",
];

#[derive(Debug, Clone)]
enum Op {
    Customer,
    Checkout {
        price: usize,
        card: usize,
        trial: bool,
    },
    Subscribe {
        customer: usize,
        price: usize,
        card: usize,
        behavior: usize,
    },
    Change {
        sub: usize,
        price: usize,
        proration: usize,
        pending: bool,
    },
    CancelAtPeriodEnd {
        sub: usize,
        on: bool,
    },
    CancelNow {
        sub: usize,
    },
    Refund {
        charge: usize,
        amount: i64,
    },
    Authenticate {
        pi: usize,
        ok: bool,
    },
    CloseDispute {
        dispute: usize,
        won: bool,
    },
    Pay {
        invoice: usize,
        card: usize,
    },
    Days(i64),
    Garbage {
        path: usize,
        body: String,
    },
}

/// A random operation; sequences are seeded, so a failure names its seed and replays.
fn op(rng: &mut SmallRng) -> Op {
    let card = |rng: &mut SmallRng| rng.gen_range(0..CARDS.len());
    match rng.gen_range(0..12) {
        0 => Op::Customer,
        1 => Op::Checkout {
            price: rng.gen_range(0..2),
            card: card(rng),
            trial: rng.gen(),
        },
        2 => Op::Subscribe {
            customer: rng.gen_range(0..8),
            price: rng.gen_range(0..2),
            card: card(rng),
            behavior: rng.gen_range(0..3),
        },
        3 => Op::Change {
            sub: rng.gen_range(0..8),
            price: rng.gen_range(0..2),
            proration: rng.gen_range(0..3),
            pending: rng.gen(),
        },
        4 => Op::CancelAtPeriodEnd {
            sub: rng.gen_range(0..8),
            on: rng.gen(),
        },
        5 => Op::CancelNow {
            sub: rng.gen_range(0..8),
        },
        6 => Op::Refund {
            charge: rng.gen_range(0..8),
            amount: rng.gen_range(-10..6000),
        },
        7 => Op::Authenticate {
            pi: rng.gen_range(0..8),
            ok: rng.gen(),
        },
        8 => Op::CloseDispute {
            dispute: rng.gen_range(0..8),
            won: rng.gen(),
        },
        9 => Op::Pay {
            invoice: rng.gen_range(0..8),
            card: card(rng),
        },
        10 => Op::Days(rng.gen_range(1..40)),
        _ => {
            const CHARS: &[u8] = b"abcxyz[]=&%09_.";
            let len = rng.gen_range(0..40);
            let body = (0..len)
                .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
                .collect();
            Op::Garbage {
                path: rng.gen_range(0..6),
                body,
            }
        }
    }
}

fn ops(seed: u64, max: usize) -> Vec<Op> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = rng.gen_range(1..max);
    (0..n).map(|_| op(&mut rng)).collect()
}

fn ids(sim: &Sim, list_path: &str) -> Vec<String> {
    let (_, body) = sim.call("GET", list_path, "");
    body["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|o| o["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn pick(v: &[String], i: usize) -> Option<&String> {
    (!v.is_empty()).then(|| &v[i % v.len()])
}

/// Runs one operation; returns the statuses it produced.
fn run(sim: &Sim, prices: &[String; 2], op: &Op, now: &mut i64) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut call = |method: &str, path: &str, form: &str| {
        let (status, body) = sim.call(method, path, form);
        statuses.push(status);
        body
    };
    match op {
        Op::Customer => {
            call("POST", "/v1/customers", "email=p@x.io");
        }
        Op::Checkout { price, card, trial } => {
            let trial = if *trial {
                "&subscription_data[trial_period_days]=7"
            } else {
                ""
            };
            let cs = call(
                "POST",
                "/v1/checkout/sessions",
                &format!(
                    "mode=subscription&line_items[0][price]={}&success_url=https://a.test{trial}",
                    prices[*price]
                ),
            );
            if let Some(id) = cs["id"].as_str() {
                call(
                    "POST",
                    &format!("/_sim/checkout/sessions/{id}/complete"),
                    &format!("payment_method={}", CARDS[*card]),
                );
            }
        }
        Op::Subscribe {
            customer,
            price,
            card,
            behavior,
        } => {
            let customers = ids(sim, "/v1/customers?limit=100");
            if let Some(c) = pick(&customers, *customer) {
                let pb = [
                    "allow_incomplete",
                    "default_incomplete",
                    "error_if_incomplete",
                ][*behavior];
                call(
                    "POST",
                    "/v1/subscriptions",
                    &format!("customer={c}&items[0][price]={}&default_payment_method={}&payment_behavior={pb}", prices[*price], CARDS[*card]),
                );
            }
        }
        Op::Change {
            sub,
            price,
            proration,
            pending,
        } => {
            let subs = ids(sim, "/v1/subscriptions?limit=100");
            if let Some(s) = pick(&subs, *sub) {
                let (_, obj) = sim.call("GET", &format!("/v1/subscriptions/{s}"), "");
                let si = obj["items"]["data"][0]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let pr = ["create_prorations", "always_invoice", "none"][*proration];
                let pb = if *pending {
                    "&payment_behavior=pending_if_incomplete"
                } else {
                    ""
                };
                call(
                    "POST",
                    &format!("/v1/subscriptions/{s}"),
                    &format!(
                        "items[0][id]={si}&items[0][price]={}&proration_behavior={pr}{pb}",
                        prices[*price]
                    ),
                );
            }
        }
        Op::CancelAtPeriodEnd { sub, on } => {
            if let Some(s) = pick(&ids(sim, "/v1/subscriptions?limit=100"), *sub) {
                call(
                    "POST",
                    &format!("/v1/subscriptions/{s}"),
                    &format!("cancel_at_period_end={on}"),
                );
            }
        }
        Op::CancelNow { sub } => {
            if let Some(s) = pick(&ids(sim, "/v1/subscriptions?limit=100"), *sub) {
                call("DELETE", &format!("/v1/subscriptions/{s}"), "");
            }
        }
        Op::Refund { charge, amount } => {
            if let Some(c) = pick(&ids(sim, "/v1/charges?limit=100"), *charge) {
                call(
                    "POST",
                    "/v1/refunds",
                    &format!("charge={c}&amount={amount}"),
                );
            }
        }
        Op::Authenticate { pi, ok } => {
            if let Some(p) = pick(&ids(sim, "/v1/payment_intents?limit=100"), *pi) {
                let outcome = if *ok { "success" } else { "failure" };
                call(
                    "POST",
                    &format!("/_sim/payment_intents/{p}/authenticate"),
                    &format!("outcome={outcome}"),
                );
            }
        }
        Op::CloseDispute { dispute, won } => {
            if let Some(d) = pick(&ids(sim, "/v1/disputes?limit=100"), *dispute) {
                let outcome = if *won { "won" } else { "lost" };
                call(
                    "POST",
                    &format!("/_sim/disputes/{d}/close"),
                    &format!("outcome={outcome}"),
                );
            }
        }
        Op::Pay { invoice, card } => {
            if let Some(i) = pick(&ids(sim, "/v1/invoices?limit=100"), *invoice) {
                call(
                    "POST",
                    &format!("/v1/invoices/{i}/pay"),
                    &format!("payment_method={}", CARDS[*card]),
                );
            }
        }
        Op::Days(d) => {
            *now += d * DAY;
            sim.set_time(Some(*now));
        }
        Op::Garbage { path, body } => {
            let p = [
                "/v1/customers",
                "/v1/subscriptions",
                "/v1/checkout/sessions",
                "/v1/refunds",
                "/v1/prices",
                "/_sim/config",
            ][*path];
            call("POST", p, body);
            call("GET", &format!("{p}?{body}"), "");
        }
    }
    statuses
}

fn check_invariants(sim: &Sim) -> Result<(), String> {
    sim.with_state(|s| {
        for o in s.objects.values() {
            match o["object"].as_str() {
                Some("charge") => {
                    let (cap, refd) = (
                        o["amount_captured"].as_i64().unwrap_or(0),
                        o["amount_refunded"].as_i64().unwrap_or(0),
                    );
                    if refd > cap || refd < 0 {
                        return Err(format!("charge refunded {refd} of {cap}: {}", o["id"]));
                    }
                }
                Some("invoice") if o["status"] == "paid" && o["amount_remaining"] != 0 => {
                    return Err(format!("paid invoice with amount remaining: {}", o["id"]));
                }
                Some("subscription") => {
                    let st = o["status"].as_str().unwrap_or_default();
                    let known = [
                        "incomplete",
                        "incomplete_expired",
                        "trialing",
                        "active",
                        "past_due",
                        "unpaid",
                        "canceled",
                        "paused",
                    ];
                    if !known.contains(&st) {
                        return Err(format!("unknown status {st}"));
                    }
                    for item in o["items"]["data"].as_array().into_iter().flatten() {
                        if item["current_period_start"].as_i64()
                            >= item["current_period_end"].as_i64()
                        {
                            return Err(format!("empty period on {}", o["id"]));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    })
}

fn fresh(seed: u64) -> (Sim, [String; 2]) {
    let sim = Sim::new(stripe_sim::SimConfig {
        seed,
        frozen_time: Some(T0),
        ..Default::default()
    });
    let prices = [standard_price(&sim), pro_price(&sim)];
    (sim, prices)
}

#[test]
fn random_call_sequences_never_fail_with_5xx_and_keep_stripes_invariants() {
    for seed in 0..48 {
        let (sim, prices) = fresh(11);
        let mut now = T0;
        for op in ops(seed, 30) {
            let statuses = run(&sim, &prices, &op, &mut now);
            assert!(
                statuses.iter().all(|s| *s < 500),
                "seed {seed}: {op:?} → {statuses:?}"
            );
            if let Err(e) = check_invariants(&sim) {
                panic!("seed {seed}, after {op:?}: {e}");
            }
        }
    }
}

#[test]
fn the_same_seed_and_calls_give_the_same_events() {
    for seed in 100..116 {
        let (a, pa) = fresh(5);
        let (b, pb) = fresh(5);
        let (mut na, mut nb) = (T0, T0);
        for op in ops(seed, 15) {
            run(&a, &pa, &op, &mut na);
            run(&b, &pb, &op, &mut nb);
        }
        let all = |s: &Sim| -> Vec<Value> { s.events() };
        assert_eq!(all(&a), all(&b), "seed {seed}");
    }
}
