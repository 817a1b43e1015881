//! Measures the raw group-commit ceiling of a store: how many events per
//! second `insert_events` durably commits, one batch after another, for a
//! few batch sizes; then how fast a worker drains that backlog with
//! `claim_events` + `finish_events`.
//!
//! `cargo run --release -p billd-store --example insert_ceiling -- sqlite:///tmp/x.db [events]`

use std::time::Instant;

use billd_store::{connect, EventFinish, EventResult, InsertOutcome, NewEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: insert_ceiling <database url> [events per run]")?;
    let total: usize = args.next().map_or(Ok(20_000), |n| n.parse())?;
    let store = connect(&url).await?;
    store.migrate().await?;
    let run = std::process::id();
    for batch_size in [1usize, 25, 100, 250, 500] {
        let events: Vec<NewEvent> = (0..total)
            .map(|n| event(&format!("evt_{run}_{batch_size}_{n:08}"), n))
            .collect();
        let started = Instant::now();
        let mut inserted = 0;
        let runs = if batch_size == 1 { 1_000 } else { total };
        let mut latencies = Vec::with_capacity(runs / batch_size + 1);
        for batch in events[..runs].chunks(batch_size) {
            let call = Instant::now();
            let outcomes = store.insert_events(batch).await?;
            latencies.push(call.elapsed());
            inserted += outcomes
                .iter()
                .filter(|o| **o == InsertOutcome::Inserted)
                .count();
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort();
        let at = |per_mille: usize| {
            latencies[(latencies.len() - 1) * per_mille / 1000].as_secs_f64() * 1e3
        };
        println!(
            "{:?} batch {batch_size:>4}: {inserted} events in {elapsed:.2}s = {:.0} events/s; \
             commit p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            store.backend(),
            inserted as f64 / elapsed,
            at(500),
            at(990),
            at(1000),
        );
    }
    let started = Instant::now();
    let (mut drained, mut claims) = (0usize, 0usize);
    while drained < 10_000 {
        let claimed = store.claim_events(2_000_000_000, 2_000_000_300, 64).await?;
        if claimed.is_empty() {
            break;
        }
        claims += 1;
        let results: Vec<EventFinish> = claimed
            .into_iter()
            .map(|event| EventFinish {
                id: event.id,
                claim: event.claim,
                result: EventResult::Processed,
            })
            .collect();
        drained += store.finish_events(&results, 2_000_000_001).await?.len();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{:?} drain: {drained} events in {claims} claims of up to 64 in {elapsed:.2}s = {:.0} events/s",
        store.backend(),
        drained as f64 / elapsed
    );
    Ok(())
}

/// An `invoice.paid` event about the size of a real one (~2 KiB).
fn event(id: &str, n: usize) -> NewEvent {
    let customer = format!("cus_{:06}", n % 5_000);
    let object_id = format!("in_{n:012}");
    let padding = "x".repeat(1_800);
    let payload = format!(
        r#"{{"id":"{id}","object":"event","api_version":"2026-09-30.endive","created":1700000000,"data":{{"object":{{"id":"{object_id}","object":"invoice","customer":"{customer}","description":"{padding}"}}}},"type":"invoice.paid"}}"#
    );
    NewEvent {
        id: id.to_owned(),
        event_type: "invoice.paid".to_owned(),
        api_version: Some("2026-09-30.endive".to_owned()),
        created: 1_700_000_000,
        object_id: Some(object_id),
        stripe_customer: Some(customer),
        payload,
        received_at: 1_700_000_001,
    }
}
