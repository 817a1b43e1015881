//! Fuzzing the way in. Arbitrary bytes and structure-aware mutations of
//! Stripe's example objects (fields dropped, duplicated, nulled or retyped,
//! huge numbers, long and odd strings, deep nesting, truncation, invalid
//! UTF-8) go through the signature check, the envelope parser, every event
//! parser and `billd_core::apply`; a sample of them then goes through the
//! real webhook endpoint and inbox worker. Nothing may panic; every
//! rejection is a 4xx with a code or a `dead` event with a reason.
//!
//! `BILLD_FUZZ_CASES` sets the number of pure cases (100,000 by default),
//! `BILLD_FUZZ_SEED` the seed (printed, so a failure replays);
//! `scripts/fuzz.sh` runs millions in a release build.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use billd_core::{apply, entitlements, Catalog, CustomerState, Usage};
use billd_server::pipeline::{
    parse_envelope, Clock, DeadReason, FailureClass, HandlerError, SystemClock, HANDLED_EVENT_TYPES,
};
use billd_store::{EventFilter, EventStatus};
use billd_stripe::events::{parse_event, ParsedEvent};
use billd_stripe::webhook::{sign, verify};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};

use crate::on_both_databases;
use crate::support::{t0, Db, Harness};

const SECRET: &str = "whsec_fuzz";
/// Stands for a value spliced into the serialized text afterwards (a
/// number serde_json cannot hold, or nesting too deep to build as a tree).
const SPLICE: &str = "\u{1}splice\u{1}";

/// Every code the signature check may answer.
const VERIFY_CODES: [&str; 5] = [
    "signature_missing",
    "signature_malformed",
    "signature_v1_missing",
    "signature_mismatch",
    "timestamp_out_of_tolerance",
];

fn objects() -> Value {
    serde_json::from_str(include_str!(
        "../../../billd-stripe/tests/events_fixtures/stripe_objects.json"
    ))
    .unwrap()
}

/// Stripe's example object for an event type, by the type's prefix.
fn example_for<'a>(objects: &'a Value, event_type: &str) -> &'a Value {
    let prefix = event_type
        .rsplit_once('.')
        .map_or(event_type, |(prefix, _)| prefix);
    let name = match prefix {
        "customer.subscription" => "subscription",
        "charge.dispute" => "dispute",
        "customer.discount" => "discount",
        "checkout.session" => "checkout.session",
        "invoice" => "invoice",
        "charge" => "charge",
        "payment_method" => "payment_method",
        "payment_intent" => "payment_intent",
        "invoice_payment" => "invoice_payment",
        _ => "customer",
    };
    &objects[name]
}

fn seed() -> u64 {
    std::env::var("BILLD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_b111d)
}

fn cases() -> u64 {
    std::env::var("BILLD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

/// The JSON pointers of every value in `value`, the root included.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let key = key.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn odd_string(rng: &mut SmallRng) -> String {
    match rng.gen_range(0..8) {
        0 => String::new(),
        1 => "x".repeat(rng.gen_range(256..20_000)),
        2 => "evt_".to_owned(),
        3 => format!("cus_{}", "9".repeat(rng.gen_range(1..300))),
        4 => "sub_\u{0}\u{202e}\u{1f4b3}é".to_owned(),
        5 => "in_1\\\"quoted\"".to_owned(),
        6 => ["active", "paid", "lost", "won", "canceled", "bogus"][rng.gen_range(0..6)].into(),
        _ => (0..rng.gen_range(1..40))
            .map(|_| char::from_u32(rng.gen_range(0x20..0x3000)).unwrap_or('?'))
            .collect(),
    }
}

fn odd_value(rng: &mut SmallRng) -> Value {
    match rng.gen_range(0..9) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => json!(rng.gen::<i64>()),
        3 => json!(i64::MAX),
        4 => json!(rng.gen::<f64>() * 1e18),
        5 => json!(odd_string(rng)),
        6 => json!([]),
        7 => json!({}),
        _ => json!({ "id": odd_string(rng), "object": "list", "data": [Value::Null] }),
    }
}

/// Text for [`SPLICE`]: what a JSON tree cannot hold.
fn splice(rng: &mut SmallRng) -> String {
    match rng.gen_range(0..3) {
        0 => [
            "1e400",
            "-1e400",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "-0",
            "0.5",
            "1E2",
        ][rng.gen_range(0..8)]
        .to_owned(),
        1 => {
            let depth = rng.gen_range(1..5_000);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }
        _ => r#""\ud800""#.to_owned(),
    }
}

/// One mutation of `envelope` at a random place.
fn mutate(rng: &mut SmallRng, envelope: &mut Value) {
    let mut all = Vec::new();
    pointers(envelope, String::new(), &mut all);
    let at = all[rng.gen_range(0..all.len())].clone();
    let (parent, key) = at.rsplit_once('/').unwrap_or(("", ""));
    match rng.gen_range(0..7) {
        // Drop the field (or array element).
        0 => match envelope.pointer_mut(parent) {
            Some(Value::Object(map)) => {
                map.remove(&key.replace("~1", "/").replace("~0", "~"));
            }
            Some(Value::Array(items)) => {
                if let Ok(i) = key.parse::<usize>() {
                    if i < items.len() {
                        items.remove(i);
                    }
                }
            }
            _ => {}
        },
        // Duplicate an array element or copy a sibling's value.
        1 => {
            let copy = envelope.pointer(&at).cloned().unwrap_or(Value::Null);
            match envelope.pointer_mut(parent) {
                Some(Value::Array(items)) => items.push(copy),
                Some(Value::Object(map)) => {
                    map.insert(format!("{key}_copy"), copy);
                }
                _ => {}
            }
        }
        2 => {
            if let Some(slot) = envelope.pointer_mut(&at) {
                *slot = Value::String(SPLICE.to_owned());
            }
        }
        _ => {
            if let Some(slot) = envelope.pointer_mut(&at) {
                *slot = odd_value(rng);
            }
        }
    }
}

/// Mutations of the serialized text: a key given twice, truncation, a
/// flipped or invalid byte.
fn mutate_bytes(rng: &mut SmallRng, mut bytes: Vec<u8>) -> Vec<u8> {
    match rng.gen_range(0..4) {
        0 => {
            let key = ["id", "type", "created", "data", "customer", "status"][rng.gen_range(0..6)];
            let value = serde_json::to_string(&odd_value(rng)).unwrap();
            let inner = b"\"object\":{";
            let at = bytes
                .windows(inner.len())
                .position(|w| w == inner)
                .map_or(1, |i| i + inner.len());
            let at = if rng.gen() { 1 } else { at };
            let insert = format!("\"{key}\":{value},");
            bytes.splice(at..at, insert.into_bytes());
        }
        1 => bytes.truncate(rng.gen_range(0..=bytes.len())),
        2 if !bytes.is_empty() => {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] ^= 1 << rng.gen_range(0..8);
        }
        _ => {
            let i = rng.gen_range(0..=bytes.len());
            let bad: &[u8] = [
                &[0xff][..],
                &[0xc0, 0x80],
                &[0xed, 0xa0, 0x80],
                &[0xe2, 0x82],
            ][rng.gen_range(0..4)];
            bytes.splice(i..i, bad.iter().copied());
        }
    }
    bytes
}

/// A webhook body: mostly a Stripe event built from an example object and
/// mutated, sometimes random bytes or JSON-ish noise.
fn body(rng: &mut SmallRng, objects: &Value, id: u64) -> Vec<u8> {
    match rng.gen_range(0..20) {
        0 => {
            let mut noise = vec![0; rng.gen_range(0..512)];
            rng.fill_bytes(&mut noise);
            noise
        }
        1 => {
            let alphabet = br#"{}[]":,0123456789.eE-+ truefalsnul"evt_data objectidtype\"#;
            (0..rng.gen_range(0..200))
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect()
        }
        _ => {
            let event_type = if rng.gen_range(0..10) == 0 {
                format!("fuzz.{}", odd_string(rng))
            } else {
                HANDLED_EVENT_TYPES[rng.gen_range(0..HANDLED_EVENT_TYPES.len())].to_owned()
            };
            let mut envelope = json!({
                "id": format!("evt_fuzz{id}"), "object": "event",
                "api_version": billd_stripe::API_VERSION, "created": t0(),
                "livemode": false, "pending_webhooks": 1, "type": event_type,
                "data": { "object": example_for(objects, &event_type) },
            });
            for _ in 0..rng.gen_range(1..=4) {
                mutate(rng, &mut envelope);
            }
            let text = serde_json::to_string(&envelope).unwrap();
            let quoted = serde_json::to_string(SPLICE).unwrap();
            let text = text.replace(&quoted, &splice(rng));
            let bytes = text.into_bytes();
            if rng.gen_range(0..8) == 0 {
                mutate_bytes(rng, bytes)
            } else {
                bytes
            }
        }
    }
}

/// A mutated `Stripe-Signature` header for `body`.
fn header(rng: &mut SmallRng, body: &[u8]) -> Option<String> {
    let good = sign(SECRET, t0(), body);
    Some(match rng.gen_range(0..8) {
        0 => return None,
        1 => good[..rng.gen_range(0..good.len())].to_owned(),
        2 => good.replace("v1=", "v0="),
        3 => good.replace(&format!("t={}", t0()), &format!("t={}", t0() + 301)),
        4 => format!("{good},v1=,t=,=,,"),
        5 => format!("t={},v1={}", odd_string(rng), "0".repeat(64)),
        6 => good.replace("t=", "t=99999999999999999999"),
        _ => String::from_utf8_lossy(&mutate_bytes(rng, good.into_bytes())).into_owned(),
    })
}

/// How far a case got: refused by the envelope parser, by an event parser
/// (with its code), parsed as a type billd skips, or applied.
fn check(
    rng: &mut SmallRng,
    objects: &Value,
    catalog: &Catalog,
    paid: &CustomerState,
    id: u64,
) -> &'static str {
    let body = body(rng, objects, id);
    let now = t0();
    // Signed as Stripe signs it, the body verifies, whatever it holds.
    let good = sign(SECRET, now, &body);
    assert_eq!(verify(Some(&good), &body, &[SECRET], 300, now), Ok(()));
    if !body.is_empty() {
        let mut other = body.clone();
        let i = rng.gen_range(0..other.len());
        other[i] ^= 1;
        let refused = verify(Some(&good), &other, &[SECRET], 300, now).unwrap_err();
        assert_eq!(refused.code(), "signature_mismatch");
    }
    let header = header(rng, &body);
    if let Err(e) = verify(header.as_deref(), &body, &[SECRET], 300, now) {
        assert!(VERIFY_CODES.contains(&e.code()), "{e:?}");
    }

    let Ok(stored) = parse_envelope(&body, now) else {
        return "envelope_refused";
    };
    match parse_event(&stored.payload) {
        Ok(ParsedEvent::Handled { event, .. }) => {
            for state in [&CustomerState::default(), paid] {
                let decision = apply(state, &event, catalog, now);
                entitlements(&decision.state, catalog, &Usage::new(), now);
            }
            "applied"
        }
        Ok(ParsedEvent::Unhandled { .. }) => "unhandled",
        Err(e) => {
            // A parse failure is permanent: dead at once, with a reason
            // naming what is wrong with the payload.
            let class = HandlerError::from(anyhow::Error::from(e.clone())).class();
            assert!(
                matches!(
                    class,
                    FailureClass::Permanent(
                        DeadReason::PayloadInvalid
                            | DeadReason::IdInvalid
                            | DeadReason::ShapeUnknown
                    )
                ),
                "{e:?} classed {class:?}"
            );
            e.code()
        }
    }
}

/// A customer on the paid plan, for events to land on a state with
/// something to change.
fn paid_state(objects: &Value, catalog: &Catalog) -> CustomerState {
    let mut subscription = objects["subscription"].clone();
    subscription["status"] = json!("active");
    subscription["created"] = json!(t0());
    subscription["metadata"] = json!({ "billd_customer_id": "u_fuzz", "billd_plan": "pro" });
    let item = &mut subscription["items"]["data"][0];
    item["price"]["lookup_key"] = json!("billd_pro_eur");
    item["price"]["currency"] = json!("eur");
    item["current_period_start"] = json!(t0());
    item["current_period_end"] = json!(t0() + 30 * 86_400);
    let body = json!({
        "id": "evt_fuzz_paid", "object": "event", "api_version": billd_stripe::API_VERSION,
        "created": t0(), "type": "customer.subscription.created",
        "data": { "object": subscription },
    });
    let Ok(ParsedEvent::Handled { event, .. }) = parse_event(&body.to_string()) else {
        panic!("the paid subscription example does not parse");
    };
    apply(&CustomerState::default(), &event, catalog, t0()).state
}

#[test]
fn arbitrary_and_mutated_payloads_never_panic_and_every_rejection_has_a_code() {
    let seed = seed();
    let cases = cases();
    eprintln!("fuzz: {cases} cases, BILLD_FUZZ_SEED={seed}");
    let objects = objects();
    let catalog = Catalog::seed();
    let paid = paid_state(&objects, &catalog);
    let plan = entitlements(&paid, &catalog, &Usage::new(), t0()).plan;
    assert_eq!(plan.to_string(), "pro");
    let started = Instant::now();
    let mut outcomes = std::collections::BTreeMap::<&str, u64>::new();
    for case in 0..cases {
        // Each case has its own seed, so one can be replayed alone.
        let case_seed = seed.wrapping_add(case.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut rng = SmallRng::seed_from_u64(case_seed);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            check(&mut rng, &objects, &catalog, &paid, case)
        }));
        if let Ok(outcome) = outcome {
            *outcomes.entry(outcome).or_default() += 1;
        } else {
            let mut rng = SmallRng::seed_from_u64(case_seed);
            let body = body(&mut rng, &objects, case);
            panic!(
                "case {case} (BILLD_FUZZ_SEED={seed}) failed on body {:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    eprintln!(
        "fuzz: {cases} cases in {:.1?}: {outcomes:?}",
        started.elapsed()
    );
    // The mutations reach every stage: some payloads are refused at the
    // door, some by an event parser, and many still apply.
    if cases >= 10_000 {
        for stage in ["envelope_refused", "applied", "unhandled", "invalid_json"] {
            assert!(
                outcomes.get(stage).copied().unwrap_or(0) > cases / 100,
                "{outcomes:?}"
            );
        }
    }
}

/// Through real HTTP and the inbox worker: each delivery is acknowledged
/// or refused with a code, and each stored event ends processed, skipped,
/// unlinked, dead with a reason, or failed waiting for a retry.
async fn mutated_webhooks_over_http_are_acknowledged_or_refused_with_a_code(db: Db) {
    let h = Harness::start(db, t0(), Default::default()).await;
    let objects = objects();
    let mut rng = SmallRng::seed_from_u64(seed());
    let sent = 300;
    let mut refused = 0;
    for id in 0..sent {
        let body = body(&mut rng, &objects, id);
        // Signed with the endpoint's secret at the wall clock's time, as
        // the emulator signs its own deliveries.
        let header = sign(&h.webhook_secret, SystemClock.now(), &body);
        let response = h
            .http
            .post(format!("{}/webhooks/stripe", h.base))
            .header("Stripe-Signature", header)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        match status {
            200 => assert_eq!(answer["received"], true, "{answer}"),
            400 => {
                assert_eq!(answer["error"]["code"], "payload_invalid", "{answer}");
                refused += 1;
            }
            other => panic!("{other} {answer} for {:?}", String::from_utf8_lossy(&body)),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = h
            .store
            .list_events(&EventFilter {
                limit: 10_000,
                ..EventFilter::default()
            })
            .await
            .unwrap();
        let busy = events
            .iter()
            .filter(|e| matches!(e.status, EventStatus::Pending | EventStatus::Processing))
            .count();
        if busy == 0 {
            break events;
        }
        assert!(Instant::now() < deadline, "{busy} events still waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for event in &events {
        *statuses.entry(format!("{:?}", event.status)).or_default() += 1;
    }
    eprintln!("fuzz over HTTP: {refused} refused, stored {statuses:?}");
    // Both ways out are exercised: refused at the door, and dead inside.
    assert!(refused > 0 && statuses.contains_key("Dead"), "{statuses:?}");
    let codes: Vec<_> = [
        DeadReason::PayloadInvalid,
        DeadReason::IdInvalid,
        DeadReason::ShapeUnknown,
        DeadReason::InvariantViolated,
        DeadReason::StripeRefused,
    ]
    .map(DeadReason::code)
    .into();
    for event in &events {
        match event.status {
            EventStatus::Dead => {
                let error = event.last_error.as_deref().unwrap_or_default();
                assert!(
                    codes.iter().any(|code| error.starts_with(code)),
                    "{}: dead without a reason: {error}",
                    event.id
                );
            }
            EventStatus::Failed => assert!(event.last_error.is_some(), "{}", event.id),
            _ => {}
        }
    }
    h.shutdown().await;
}

on_both_databases!(mutated_webhooks_over_http_are_acknowledged_or_refused_with_a_code);
